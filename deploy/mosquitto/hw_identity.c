/*
 * hw_identity: stamp the publisher's identity into ThingsBoard-API topics.
 *
 * Why: ThingsBoard-compatible gateways publish to fixed topics (v1/gateway/telemetry,
 * v1/devices/me/telemetry, ...) that say nothing about who sent them, and MQTT never
 * passes the publisher's username to subscribers. The broker is the only party that
 * knows the authenticated username, so it rewrites
 *
 *     v1/gateway/<rest>     ->  tb/<username>/v1/gateway/<rest>
 *     v1/devices/me/<rest>  ->  tb/<username>/v1/devices/me/<rest>
 *
 * and the collector reads identity from the topic (username = <enterprise>/<gateway>).
 * That identity is only worth something if nobody can write tb/... directly, so any
 * client publish to tb or tb/... is refused here, whatever the ACL file says.
 *
 * Ordering (mosquitto 2.0.x, src/handle_publish.c; checked against 2.0.11 by
 * tests/test_broker.py): the ACL check (MOSQ_ACL_WRITE) runs on the topic as the client
 * sent it, *then* MOSQ_EVT_MESSAGE runs. deploy/mosquitto/acl grants both the original and
 * the rewritten topic, so it stays correct if a future mosquitto swaps the order; the tb/
 * refusal here does not depend on the order at all.
 *
 * Refusing: returning MOSQ_ERR_ACL_DENIED drops the message and completes the QoS flow
 * with reason "not authorized" (0x87) for MQTT v5 clients, exactly like an ACL denial;
 * the client stays connected.
 *
 * Will messages do not pass through MOSQ_EVT_MESSAGE in 2.0. The ACL file is what keeps a
 * will off tb/ (mosquitto ACL-checks the will topic when it sends the will), and a will on
 * v1/gateway/... is delivered unrewritten to nobody (no client may read v1/#).
 */
#include <stdio.h>
#include <string.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

/* Topic ownership differs between broker versions: 2.0 adopts the pointer we put in
 * event_data->topic and does NOT free the old one (we must), while the 2.1 development
 * line frees it itself (freeing here would be a double free). Refuse to build for a
 * broker whose contract we have not checked. */
#if LIBMOSQUITTO_MAJOR != 2 || LIBMOSQUITTO_MINOR != 0
#error "hw_identity.c is written for the mosquitto 2.0 plugin ABI; re-check topic ownership"
#endif

#define TB_PREFIX "tb"
/* MQTT string length limit; a longer rewritten topic could not be sent to subscribers. */
#define MQTT_MAX_TOPIC 65535

static mosquitto_plugin_id_t *plugin_id;

/* Topic filter semantics of "<prefix>/#": the prefix itself or anything below it. */
static int under(const char *topic, const char *prefix)
{
	size_t n = strlen(prefix);
	return strncmp(topic, prefix, n) == 0 && (topic[n] == '\0' || topic[n] == '/');
}

/* The collector splits tb/<enterprise>/<gateway>/<original topic> by position, so a
 * username must be exactly two non-empty levels without wildcards; anything else could
 * make one identity parse as another. */
static int valid_identity(const char *username)
{
	const char *slash;

	if(username == NULL || username[0] == '\0') return 0;
	if(strpbrk(username, "+#") != NULL) return 0;
	slash = strchr(username, '/');
	if(slash == NULL || slash == username || slash[1] == '\0') return 0;
	return strchr(slash + 1, '/') == NULL;
}

static int on_message(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_message *ed = event_data;
	const char *username;
	char *topic;
	size_t len;

	(void)event;
	(void)userdata;

	if(under(ed->topic, TB_PREFIX)){
		mosquitto_log_printf(MOSQ_LOG_NOTICE,
				"hw_identity: refused publish to '%s' from client '%s': tb/ is broker-written only",
				ed->topic, mosquitto_client_id(ed->client));
		return MOSQ_ERR_ACL_DENIED;
	}
	if(!under(ed->topic, "v1/gateway") && !under(ed->topic, "v1/devices/me")){
		return MOSQ_ERR_SUCCESS;
	}

	username = mosquitto_client_username(ed->client);
	if(!valid_identity(username)){
		mosquitto_log_printf(MOSQ_LOG_NOTICE,
				"hw_identity: refused publish to '%s' from client '%s': username '%s' is not <enterprise>/<gateway>",
				ed->topic, mosquitto_client_id(ed->client), username ? username : "");
		return MOSQ_ERR_ACL_DENIED;
	}

	len = strlen(TB_PREFIX) + 1 + strlen(username) + 1 + strlen(ed->topic);
	if(len > MQTT_MAX_TOPIC){
		return MOSQ_ERR_ACL_DENIED;
	}
	/* Must come from the broker's allocator: the broker frees the stored topic later. */
	topic = mosquitto_malloc(len + 1);
	if(topic == NULL){
		return MOSQ_ERR_NOMEM;
	}
	snprintf(topic, len + 1, TB_PREFIX "/%s/%s", username, ed->topic);
	mosquitto_free(ed->topic);
	ed->topic = topic;
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	for(int i = 0; i < supported_version_count; i++){
		if(supported_versions[i] == 5) return 5;
	}
	return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
		struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	(void)options;
	(void)option_count;

	plugin_id = identifier;
	return mosquitto_callback_register(plugin_id, MOSQ_EVT_MESSAGE, on_message, NULL, NULL);
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	(void)options;
	(void)option_count;

	return mosquitto_callback_unregister(plugin_id, MOSQ_EVT_MESSAGE, on_message, NULL);
}
