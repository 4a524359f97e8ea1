-- gateways.password_hash held a copy of the broker's $7$ hash (PBKDF2-SHA512, 101
-- iterations): in the application database, and so in its backups, it allowed offline
-- guessing of gateway passwords. The broker's password file is the only place for it;
-- the registry keeps only when credentials were last issued (`hazardwatch gateway list`).
-- Rows issued before this migration get the migration time (the exact time is unknown).
ALTER TABLE gateways ADD COLUMN credentials_issued_at timestamptz;
UPDATE gateways SET credentials_issued_at = now() WHERE password_hash IS NOT NULL;
ALTER TABLE gateways DROP COLUMN password_hash;
