-- privileges: grants and row-level security decide who sees, scores, changes
-- and deletes a model; server files need pg_read_server_files
\getenv shared MEDTL_SHARED
\set pfile :shared '/models/mobilenet_v2_imagenet/labels.txt'
SET search_path = public, medtl;
CREATE ROLE medtl_alice LOGIN;
CREATE ROLE medtl_bob LOGIN;
GRANT SELECT ON samples, files TO medtl_alice, medtl_bob;

-- alice registers a model from bytes (no server file access needed)
SET ROLE medtl_alice;
SELECT import_model('alice_net', 'mobilenet_v2', weights, labels => labels, padding => 'tf_same') > 0 AS imported
  FROM files;
SELECT predict('alice_net', image) AS alice_scores FROM samples WHERE name = 'cat_224.png';
-- but she may not read files on the server
SELECT read_server_file('/etc/hostname');
SELECT import_model_file('alice_file', 'mobilenet_v2', '/etc/hostname');
-- she sees her own model only, not the superuser's
SELECT name, owner FROM medtl.models ORDER BY name;
RESET ROLE;

-- bob sees nothing of alice's and cannot score, change or delete her model
SET ROLE medtl_bob;
SELECT count(*) AS visible_models, (SELECT count(*) FROM medtl.weights) AS visible_tensors FROM medtl.models;
SELECT predict('alice_net', image) FROM samples WHERE name = 'cat_224.png';
UPDATE medtl.models SET labels = NULL WHERE name = 'alice_net';
DELETE FROM medtl.models WHERE name = 'alice_net';
DELETE FROM medtl.weights;
SELECT drop_model('alice_net');
SELECT share_model('alice_net', 'medtl_bob');
-- nor claim a model in alice's name
INSERT INTO medtl.models (name, arch, num_classes, owner) VALUES ('fake', 'resnet18', 2, 'medtl_alice');
RESET ROLE;

-- alice shares it with bob: he may score it but still not change it
SET ROLE medtl_alice;
SELECT share_model('alice_net', 'medtl_bob');
RESET ROLE;
SET ROLE medtl_bob;
SELECT predict('alice_net', image) AS bob_scores FROM samples WHERE name = 'cat_224.png';
UPDATE medtl.models SET labels = NULL WHERE name = 'alice_net';
WITH d AS (DELETE FROM medtl.weights RETURNING 1) SELECT count(*) AS deleted FROM d;
SELECT name FROM medtl.models;
RESET ROLE;
SELECT cardinality(labels) AS labels_untouched,
       (SELECT count(*) FROM medtl.weights JOIN medtl.models USING (model_id) WHERE name = 'alice_net') AS tensors
  FROM medtl.models WHERE name = 'alice_net';

-- withdrawn again: bob's next query no longer sees it
SET ROLE medtl_alice;
SELECT unshare_model('alice_net', 'medtl_bob');
RESET ROLE;
SET ROLE medtl_bob;
SELECT predict('alice_net', image) FROM samples WHERE name = 'cat_224.png';
RESET ROLE;

-- a role granted pg_read_server_files may import server files
GRANT pg_read_server_files TO medtl_bob;
SET ROLE medtl_bob;
SELECT octet_length(read_server_file(:'pfile')) > 0 AS bob_reads;
RESET ROLE;
REVOKE pg_read_server_files FROM medtl_bob;

-- EXECUTE can be revoked like any function's: only granted roles score
REVOKE EXECUTE ON FUNCTION predict(text, bytea) FROM PUBLIC;
SET ROLE medtl_alice;
SELECT predict('alice_net', image) FROM samples WHERE name = 'cat_224.png';
RESET ROLE;
GRANT EXECUTE ON FUNCTION predict(text, bytea) TO PUBLIC;

-- an ensemble shared without its members cannot be scored by bob
SET ROLE medtl_alice;
SELECT import_model('alice_net_b', 'mobilenet_v2', weights, labels => labels, padding => 'tf_same') > 0 AS imported
  FROM files;
SELECT create_ensemble('alice_ens', ARRAY['alice_net', 'alice_net_b']) > 0 AS created;
SELECT share_model('alice_ens', 'medtl_bob');
SELECT share_model('alice_net', 'medtl_bob');
RESET ROLE;
SET ROLE medtl_bob;
SELECT count(*) AS members_visible FROM medtl.ensemble_members;
SELECT predict('alice_ens', image) FROM samples WHERE name = 'cat_224.png';
WITH d AS (DELETE FROM medtl.ensemble_members RETURNING 1) SELECT count(*) AS bob_deleted FROM d;
RESET ROLE;
SET ROLE medtl_alice;
SELECT share_model('alice_net_b', 'medtl_bob');
RESET ROLE;
SET ROLE medtl_bob;
SELECT predict('alice_ens', image) AS bob_ensemble_scores FROM samples WHERE name = 'cat_224.png';
RESET ROLE;
SET ROLE medtl_alice;
SELECT drop_model('alice_ens');
SELECT drop_model('alice_net_b');
SELECT unshare_model('alice_net', 'medtl_bob');
RESET ROLE;

-- alice deletes her model; its weights go with it
SET ROLE medtl_alice;
SELECT drop_model('alice_net');
SELECT count(*) FROM medtl.models;
RESET ROLE;
SELECT count(*) AS alice_tensors_left FROM medtl.weights w
 WHERE NOT EXISTS (SELECT 1 FROM medtl.models m WHERE m.model_id = w.model_id);

REVOKE ALL ON samples, files FROM medtl_alice, medtl_bob;
DROP ROLE medtl_alice;
DROP ROLE medtl_bob;
