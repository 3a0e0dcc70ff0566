-- ensemble: classifiers that share labels, their probabilities averaged
SET search_path = public, medtl;
SET client_min_messages = warning;
SELECT create_ensemble('ens', ARRAY['pneumonia', 'pneumonia_seed_7']) > 0 AS created;
SELECT create_ensemble('ens_w', ARRAY['pneumonia', 'pneumonia_seed_7'], weights => '{3,1}') > 0 AS created;
SELECT name, arch, task, labels, num_classes, source FROM models WHERE name LIKE 'ens%' ORDER BY name;
SELECT e.position, m.name, e.weight FROM ensemble_members e JOIN models m ON m.model_id = e.member_id
 WHERE e.model_id = (SELECT model_id FROM models WHERE name = 'ens_w') ORDER BY e.position;
-- the ensemble's probabilities are the (weighted) mean of its members'
CREATE TEMP VIEW ens_check AS
WITH s AS (
    SELECT x.path, predict_proba('pneumonia', x.image) AS a, predict_proba('pneumonia_seed_7', x.image) AS b,
           predict_proba('ens', x.image) AS e, predict_proba('ens_w', x.image) AS w,
           predict('ens', x.image) AS label
      FROM xrays x)
SELECT count(*) AS images,
       max(greatest(abs(e[1] - (a[1] + b[1]) / 2), abs(e[2] - (a[2] + b[2]) / 2))) < 1e-6 AS mean_ok,
       max(greatest(abs(w[1] - (0.75 * a[1] + 0.25 * b[1])), abs(w[2] - (0.75 * a[2] + 0.25 * b[2])))) < 1e-6 AS weighted_ok,
       bool_and(label = CASE WHEN e[2] > e[1] THEN 'pneumonia' ELSE 'normal' END) AS predict_is_argmax,
       count(DISTINCT e::text) > 1 AS varies
  FROM s;
SELECT * FROM ens_check;
SELECT t.rank, t.label = predict('ens', x.image) AS top_is_predicted,
       t.probability = (SELECT max(p) FROM unnest(predict_proba('ens', x.image)) p) AS top_is_max
  FROM xrays x, predict_topk('ens', x.image, 1) t WHERE x.path = (SELECT min(path) FROM xrays);
-- predict_batch on an ensemble agrees with predict
SELECT count(*) AS rows, bool_and(b.label = predict('ens', x.image)) AS same_labels
  FROM predict_batch('ens', ARRAY(SELECT image FROM xrays ORDER BY path)) b
  JOIN (SELECT row_number() OVER (ORDER BY path) AS ord, image FROM xrays) x USING (ord);
-- evaluate scores an ensemble too, with the same numbers as a direct computation
SELECT evaluate('ens', 'xrays') AS eval_id \gset
WITH s AS (SELECT label, (predict_proba('ens', image))[2]::float8 AS p FROM xrays)
SELECT e.n, abs(e.accuracy - (SELECT avg(((p >= 0.5) = (label = 'pneumonia'))::int) FROM s)) < 1e-9 AS accuracy_matches,
       abs(e.auc - (SELECT auc(p, label = 'pneumonia') FROM s)) < 1e-9 AS auc_matches
  FROM evaluations e WHERE e.evaluation_id = :eval_id;
-- a member trained further is picked up by the ensemble (cached members are re-checked)
SELECT (predict_proba('ens', image))::text AS ens_before FROM xrays ORDER BY path LIMIT 1 \gset
\set VERBOSITY terse
SELECT train('pneumonia_seed_7', 'train_xrays', epochs => 1, batch_size => 8, lr => 0.05) > 0 AS retrained;
\set VERBOSITY default
SELECT images, mean_ok, weighted_ok, predict_is_argmax FROM ens_check;
SELECT (predict_proba('ens', image))::text <> :'ens_before' AS ensemble_changed FROM xrays ORDER BY path LIMIT 1;

-- errors
\set VERBOSITY terse
SELECT create_ensemble('bad', ARRAY['pneumonia']);
SELECT create_ensemble('bad', ARRAY['pneumonia', 'pneumonia']);
SELECT create_ensemble('bad', ARRAY['pneumonia', 'no_such_model']);
SELECT create_ensemble('bad', ARRAY['pneumonia', 'mobilenet_v2_imagenet']);
SELECT create_ensemble('bad', ARRAY['pneumonia', 'ens']);
SELECT create_ensemble('bad', ARRAY['pneumonia', 'pneumonia_seed_7'], weights => '{1}');
SELECT create_ensemble('bad', ARRAY['pneumonia', 'pneumonia_seed_7'], weights => '{1,-1}');
SELECT create_ensemble('bad', ARRAY['pneumonia', 'pneumonia_seed_7'], weights => '{1,NaN}');
SELECT create_ensemble('ens', ARRAY['pneumonia', 'pneumonia_seed_7']);
SELECT logits('ens', image) FROM xrays LIMIT 1;
SELECT embed('ens', image) FROM xrays LIMIT 1;
SELECT train('ens', 'train_xrays');
SELECT export_model('ens');
SELECT create_model('bad', 'ens', ARRAY['a', 'b']);
SELECT drop_model('pneumonia_seed_7');
SELECT create_model('pneumonia', 'mobilenet_v2_imagenet', ARRAY['a', 'b'], replace => true);
\set VERBOSITY default
-- a member relabelled behind the ensemble's back is refused at scoring time
BEGIN;
UPDATE models SET labels = '{healthy,sick}' WHERE name = 'pneumonia_seed_7';
SELECT predict('ens', image) FROM xrays LIMIT 1;
ROLLBACK;
-- dropping an ensemble leaves its members
SELECT drop_model('ens_w');
SELECT count(*) AS members_left FROM models WHERE name IN ('pneumonia', 'pneumonia_seed_7');
