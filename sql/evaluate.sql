-- evaluate: metrics as rows, and the auc() aggregate against brute force
SET search_path = public, medtl;

-- auc() equals the pairwise definition P(score_pos > score_neg) + 0.5 P(tie)
CREATE TABLE scores AS
SELECT i, (i % 7 = 0 OR (i * 37) % 11 < 4) AS positive,
       round((((i * 7919) % 1000) / 1000.0 + (i % 7 = 0)::int * 0.3)::numeric, 1)::float8 AS score,
       i % 3 AS site
  FROM generate_series(1, 600) i;
WITH brute AS (
    SELECT p.site,
           (count(*) FILTER (WHERE p.score > n.score) + 0.5 * count(*) FILTER (WHERE p.score = n.score))
           / count(*)::float8 AS auc
      FROM scores p JOIN scores n ON p.site = n.site AND p.positive AND NOT n.positive
     GROUP BY p.site)
SELECT s.site, round(auc(s.score, s.positive)::numeric, 6) AS auc,
       abs(auc(s.score, s.positive) - b.auc) < 1e-12 AS equals_brute_force
  FROM scores s JOIN brute b USING (site) GROUP BY s.site, b.auc ORDER BY s.site;
-- perfect, reversed, all ties, one class only, NULLs ignored
SELECT auc(x, y) AS perfect FROM (VALUES (0.1, false), (0.9, true), (0.2, false), (0.8, true)) v(x, y);
SELECT auc(x, y) AS reversed FROM (VALUES (0.9, false), (0.1, true)) v(x, y);
SELECT auc(x, y) AS ties FROM (VALUES (0.5, false), (0.5, true), (0.5, true)) v(x, y);
SELECT auc(x, y) IS NULL AS one_class FROM (VALUES (0.5, true), (0.7, true)) v(x, y);
SELECT auc(x, y) AS with_nulls FROM (VALUES (0.1, false), (0.9, true), (NULL, true), (0.5, NULL)) v(x, y);

-- a labelled set for the ImageNet model: the photographs at both sizes
CREATE TABLE labelled AS
SELECT name, image, CASE WHEN name LIKE 'bird%' THEN 'chickadee'
                         WHEN name LIKE 'cat%' THEN 'Egyptian cat'
                         ELSE 'military uniform' END AS label
  FROM samples;
SELECT evaluate('mobilenet_v2_imagenet', 'labelled') AS evaluation_id;
SELECT n, positive_label, accuracy, balanced_accuracy, round(auc::numeric, 4) AS auc, f1_macro,
       log_loss BETWEEN 0 AND 0.2 AS low_log_loss
  FROM evaluations ORDER BY evaluation_id DESC LIMIT 1;
SELECT truth, predicted, n FROM confusion
 WHERE evaluation_id = (SELECT max(evaluation_id) FROM evaluations) AND n > 0 ORDER BY truth;
SELECT class_index, class, support, precision, recall, f1, auc FROM class_metrics
 WHERE evaluation_id = (SELECT max(evaluation_id) FROM evaluations) AND support > 0 ORDER BY class_index;
-- the ROC curves run from (0,0) to (1,1), and their trapezoid area is the AUC
WITH r AS (
    SELECT class_index, fpr, tpr,
           lag(fpr) OVER w AS fpr0, lag(tpr) OVER w AS tpr0
      FROM roc_points WHERE evaluation_id = (SELECT max(evaluation_id) FROM evaluations)
    WINDOW w AS (PARTITION BY class_index ORDER BY threshold DESC))
SELECT r.class_index, min(fpr) AS min_fpr, max(tpr) AS max_tpr,
       abs(sum(coalesce((fpr - fpr0) * (tpr + tpr0) / 2, 0)) - max(c.auc)) < 1e-9 AS area_is_auc
  FROM r JOIN class_metrics c ON c.evaluation_id = (SELECT max(evaluation_id) FROM evaluations)
                              AND c.class_index = r.class_index
 GROUP BY r.class_index ORDER BY r.class_index;
-- a query as the source, other column names
SELECT evaluate('mobilenet_v2_imagenet',
                'SELECT image AS pixels, label AS truth FROM labelled WHERE name LIKE ''%\_224.png''',
                image_column => 'pixels', label_column => 'truth') > 0 AS evaluated;
SELECT n, accuracy FROM evaluations ORDER BY evaluation_id DESC LIMIT 1;

-- errors
\set VERBOSITY terse
SELECT evaluate('no_such_model', 'labelled');
SELECT evaluate('mobilenet_v2_imagenet', 'no_such_table');
SELECT evaluate('mobilenet_v2_imagenet', 'labelled', image_column => 'picture');
SELECT evaluate('mobilenet_v2_imagenet', 'SELECT image, ''zebra, but no such'' AS label FROM labelled');
SELECT evaluate('mobilenet_v2_imagenet', 'SELECT image, label FROM labelled WHERE false');
SELECT evaluate('mobilenet_v2_imagenet', 'SELECT NULL::bytea AS image, label FROM labelled');
SELECT evaluate('mobilenet_v2_imagenet', 'SELECT ''\x00''::bytea AS image, label FROM labelled');
SELECT evaluate('mobilenet_v2_imagenet', 'labelled', positive => 'not a label');
\set VERBOSITY default
-- a bad row can be skipped (with a NOTICE naming it)
SELECT evaluate('mobilenet_v2_imagenet',
                'SELECT CASE WHEN name = ''bird.png'' THEN ''\x00''::bytea ELSE image END AS image, label FROM labelled',
                skip_bad_rows => true) > 0 AS evaluated;
SELECT n FROM evaluations ORDER BY evaluation_id DESC LIMIT 1;
DELETE FROM evaluations WHERE evaluation_id = (SELECT max(evaluation_id) FROM evaluations);
-- nothing was written by the failed calls
SELECT count(*) AS evaluations FROM evaluations;
