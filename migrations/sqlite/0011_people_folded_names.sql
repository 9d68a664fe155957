-- CSR names checked against the directory (issue 12, finding 1), SQLite dialect; keep in step
-- with migrations/postgres/0011_people_folded_names.sql. `Store::people_named` compares a CSR's
-- commonName and email addresses with every person's display name, email, UPN and external id,
-- ignoring ASCII case; these indexes keep that a lookup, not a scan of the directory.
CREATE INDEX people_display_name_folded ON people (lower(display_name));
CREATE INDEX people_email_folded ON people (lower(email));
CREATE INDEX people_upn_folded ON people (lower(upn));
CREATE INDEX people_external_id_folded ON people (lower(external_id));
