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
 *
 * Partitions (plugin_opt_partitions P, default 0 = off). Several collector processes share
 * the readings, but rule state must stay in one process per enterprise (a site's sensors
 * may hang on several gateways of its enterprise, and one site's conditions combine into
 * one warning). mosquitto 2.0 can only round-robin a shared subscription, so the broker
 * stamps a partition into the topic and each collector worker subscribes to its own:
 *
 *     hw/v1/<ent>/<gw>/readings  ->  hwp/<k>/hw/v1/<ent>/<gw>/readings
 *     v1/gateway/<rest>          ->  hwp/<k>/tb/<ent>/<gw>/v1/gateway/<rest>   (and devices/me)
 *
 * k = FNV-1a 32-bit (offset basis 2166136261, prime 16777619) of the enterprise code's
 * bytes, mod P; ingest/partitions.py computes the same. The native `state` topic is NOT
 * rewritten: last wills skip this plugin, so a gateway's will and its own state messages
 * must share one topic (and its retained value); every worker reads hw/v1/+/+/state and
 * keeps its own enterprises'. Client publishes to hwp/# are refused like tb/#. At start
 * the plugin publishes P, retained, on hwp/partitions, so a collector configured for a
 * different P (or for none) refuses to run instead of silently missing partitions.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
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
#define PARTITION_PREFIX "hwp"
#define PARTITIONS_TOPIC PARTITION_PREFIX "/partitions"
#define MAX_PARTITIONS 4096
/* MQTT string length limit; a longer rewritten topic could not be sent to subscribers. */
#define MQTT_MAX_TOPIC 65535

static mosquitto_plugin_id_t *plugin_id;
static unsigned long partitions; /* 0: topics are not partitioned */

/* FNV-1a, 32 bit: tiny, well known, and the same in every language (ingest/partitions.py). */
static uint32_t fnv1a32(const char *data, size_t len)
{
	uint32_t hash = 2166136261u;
	for(size_t i = 0; i < len; i++){
		hash ^= (unsigned char)data[i];
		hash *= 16777619u;
	}
	return hash;
}

/* The enterprise segment of hw/v1/<ent>/<gw>/readings (exactly five levels), or NULL. */
static const char *native_readings_enterprise(const char *topic, size_t *len)
{
	const char *ent, *gw, *rest;

	if(strncmp(topic, "hw/v1/", 6) != 0) return NULL;
	ent = topic + 6;
	gw = strchr(ent, '/');
	if(gw == NULL || gw == ent) return NULL;
	rest = strchr(gw + 1, '/');
	if(rest == NULL || rest == gw + 1 || strcmp(rest, "/readings") != 0) return NULL;
	*len = (size_t)(gw - ent);
	return ent;
}

/* Replace ed->topic by "<prefix>/<topic>"; prefix is at most 12 characters. */
static int prepend(struct mosquitto_evt_message *ed, const char *prefix)
{
	size_t len = strlen(prefix) + 1 + strlen(ed->topic);
	char *topic;

	if(len > MQTT_MAX_TOPIC){
		return MOSQ_ERR_ACL_DENIED;
	}
	/* Must come from the broker's allocator: the broker frees the stored topic later. */
	topic = mosquitto_malloc(len + 1);
	if(topic == NULL){
		return MOSQ_ERR_NOMEM;
	}
	snprintf(topic, len + 1, "%s/%s", prefix, ed->topic);
	mosquitto_free(ed->topic);
	ed->topic = topic;
	return MOSQ_ERR_SUCCESS;
}

static int stamp_partition(struct mosquitto_evt_message *ed, const char *enterprise, size_t len)
{
	char prefix[32];

	snprintf(prefix, sizeof(prefix), PARTITION_PREFIX "/%lu",
			(unsigned long)(fnv1a32(enterprise, len) % partitions));
	return prepend(ed, prefix);
}

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

	if(under(ed->topic, TB_PREFIX) || under(ed->topic, PARTITION_PREFIX)){
		mosquitto_log_printf(MOSQ_LOG_NOTICE,
				"hw_identity: refused publish to '%s' from client '%s': tb/ and hwp/ are broker-written only",
				ed->topic, mosquitto_client_id(ed->client));
		return MOSQ_ERR_ACL_DENIED;
	}
	if(partitions > 0){
		const char *enterprise = native_readings_enterprise(ed->topic, &len);
		if(enterprise != NULL){
			return stamp_partition(ed, enterprise, len);
		}
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
	if(partitions > 0){
		return stamp_partition(ed, username, (size_t)(strchr(username, '/') - username));
	}
	return MOSQ_ERR_SUCCESS;
}

/* plugin_opt_partitions: a whole number 0..MAX_PARTITIONS; anything else stops the broker. */
static int read_options(struct mosquitto_opt *options, int option_count)
{
	for(int i = 0; i < option_count; i++){
		char *end;
		unsigned long value;

		if(strcmp(options[i].key, "partitions") != 0){
			mosquitto_log_printf(MOSQ_LOG_ERR, "hw_identity: unknown option plugin_opt_%s "
					"(known: plugin_opt_partitions)", options[i].key);
			return MOSQ_ERR_INVAL;
		}
		errno = 0;
		value = strtoul(options[i].value, &end, 10);
		if(options[i].value[0] < '0' || options[i].value[0] > '9' || *end != '\0'
				|| errno != 0 || value > MAX_PARTITIONS){
			mosquitto_log_printf(MOSQ_LOG_ERR, "hw_identity: plugin_opt_partitions '%s': "
					"expected a whole number from 0 (off) to %d", options[i].value, MAX_PARTITIONS);
			return MOSQ_ERR_INVAL;
		}
		partitions = value;
	}
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
	char announce[16];
	int rc;

	(void)userdata;

	plugin_id = identifier;
	rc = read_options(options, option_count);
	if(rc != MOSQ_ERR_SUCCESS){
		return rc;
	}
	/* Retained, so a collector learns it on subscribing; "0" replaces a stale announcement
	 * when partitioning is switched off. Queued now, delivered once the broker runs (after
	 * the persistence database is restored, so this value wins over a saved one). */
	snprintf(announce, sizeof(announce), "%lu", partitions);
	rc = mosquitto_broker_publish_copy(NULL, PARTITIONS_TOPIC, (int)strlen(announce), announce,
			1, true, NULL);
	if(rc != MOSQ_ERR_SUCCESS){
		return rc;
	}
	if(partitions > 0){
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "hw_identity: readings partitioned %lu ways "
				"under " PARTITION_PREFIX "/<k>/", partitions);
	}
	return mosquitto_callback_register(plugin_id, MOSQ_EVT_MESSAGE, on_message, NULL, NULL);
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	(void)options;
	(void)option_count;

	return mosquitto_callback_unregister(plugin_id, MOSQ_EVT_MESSAGE, on_message, NULL);
}
