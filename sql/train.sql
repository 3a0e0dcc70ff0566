-- train: derive a classifier from the pretrained backbone, fine-tune it on
-- image rows, keep every run and epoch as rows, and fail cleanly on bad input
\getenv shared MEDTL_SHARED
SET search_path = public, medtl;
-- progress NOTICEs carry timings and losses that vary by machine; the rows are checked instead
SET client_min_messages = warning;
\set chest :shared '/data/chest_xray/'
-- 40 training X-rays (20 per class) beside the 24 test ones loaded by setup
CREATE TABLE train_xrays AS
SELECT row_number() OVER (ORDER BY label, path) AS id, label, patient,
       medtl.read_server_file(:'chest' || path) AS image
  FROM (SELECT *, row_number() OVER (PARTITION BY label ORDER BY md5(path)) AS k
          FROM chest_manifest WHERE split = 'train') m
 WHERE k <= 20;
SELECT label, count(*) FROM train_xrays GROUP BY label ORDER BY label;

-- a new model: the backbone's tensors plus a fresh, seeded two-class head
SELECT create_model('pneumonia', 'mobilenet_v2_imagenet', ARRAY['normal', 'pneumonia']) > 0 AS created;
SELECT m.name, m.arch, m.num_classes, m.labels, m.padding, p.name AS parent
  FROM models m JOIN models p ON p.model_id = m.parent_id WHERE m.name = 'pneumonia';
SELECT w.tensor, w.shape FROM weights w JOIN models m USING (model_id)
 WHERE m.name = 'pneumonia' AND w.tensor LIKE 'classifier%' ORDER BY w.tensor;
-- the backbone's tensors are copied unchanged
SELECT count(*) AS same_tensors FROM weights a JOIN weights b USING (tensor)
 WHERE a.model_id = (SELECT model_id FROM models WHERE name = 'pneumonia')
   AND b.model_id = (SELECT model_id FROM models WHERE name = 'mobilenet_v2_imagenet')
   AND a.data = b.data;
-- the same seed gives the same head, another seed another
SELECT create_model('pneumonia_same_seed', 'mobilenet_v2_imagenet', ARRAY['normal', 'pneumonia']) > 0 AS created;
SELECT create_model('pneumonia_seed_7', 'mobilenet_v2_imagenet', ARRAY['normal', 'pneumonia'], seed => 7) > 0 AS created;
SELECT mb.name, a.data = b.data AS same_head
  FROM weights a JOIN models ma ON ma.model_id = a.model_id AND ma.name = 'pneumonia',
       weights b JOIN models mb ON mb.model_id = b.model_id AND mb.name IN ('pneumonia_same_seed', 'pneumonia_seed_7')
 WHERE a.tensor = 'classifier.1.weight' AND b.tensor = a.tensor ORDER BY mb.name;

-- head-only training on the frozen backbone (features computed once)
\set VERBOSITY terse
SELECT train('pneumonia', 'train_xrays', epochs => 4, batch_size => 8) AS run_id \gset
\set VERBOSITY default
SELECT status, n_train, n_val, params->>'epochs' AS epochs, resolved->>'lr' AS lr,
       resolved->>'augment' AS augment, seed, finished_at >= started_at AS timed
  FROM runs WHERE run_id = :run_id;
SELECT phase, epoch, lr > 0 AS lr_set, train_loss > 0 AS has_loss, val_accuracy IS NOT NULL AS validated
  FROM epochs WHERE run_id = :run_id ORDER BY phase, epoch;
-- only the head changed; the model's generation moved on
SELECT w.tensor, w.data = b.data AS unchanged
  FROM weights w JOIN models m USING (model_id)
  JOIN weights b ON b.tensor = w.tensor
   AND b.model_id = (SELECT model_id FROM models WHERE name = 'pneumonia_same_seed')
 WHERE m.name = 'pneumonia' AND w.tensor IN ('features.0.0.weight', 'features.18.1.running_mean',
                                           'classifier.1.weight', 'classifier.1.bias')
 ORDER BY w.tensor;
SELECT generation > 1 AS generation_moved FROM models WHERE name = 'pneumonia';
-- it now predicts the new labels
SELECT DISTINCT predict('pneumonia', image) IN ('normal', 'pneumonia') AS new_labels FROM xrays;
-- the same seed and data give the same run, epoch for epoch
\set VERBOSITY terse
SELECT train('pneumonia_same_seed', 'train_xrays', epochs => 4, batch_size => 8) AS run2 \gset
\set VERBOSITY default
SELECT count(*) AS epochs, bool_and(a.train_loss = b.train_loss AND a.val_loss = b.val_loss) AS identical
  FROM epochs a JOIN epochs b USING (phase, epoch) WHERE a.run_id = :run_id AND b.run_id = :run2;

-- evaluation of the binary model: its numbers agree with an independent computation
SELECT evaluate('pneumonia', 'xrays') AS eval_id \gset
SELECT n, positive_label, accuracy BETWEEN 0 AND 1 AS acc_ok FROM evaluations WHERE evaluation_id = :eval_id;
WITH s AS (SELECT label, (predict_proba('pneumonia', image))[2]::float8 AS p FROM xrays),
brute AS (
    SELECT (count(*) FILTER (WHERE a.p > b.p) + 0.5 * count(*) FILTER (WHERE a.p = b.p))::float8 / count(*) AS auc
      FROM s a JOIN s b ON a.label = 'pneumonia' AND b.label = 'normal'),
direct AS (
    SELECT avg(((p >= 0.5) = (label = 'pneumonia'))::int)::float8 AS acc,
           count(*) FILTER (WHERE p >= 0.5 AND label = 'pneumonia') AS tp,
           count(*) FILTER (WHERE p >= 0.5 AND label = 'normal') AS fp,
           count(*) FILTER (WHERE p < 0.5 AND label = 'pneumonia') AS fn,
           count(*) FILTER (WHERE p < 0.5 AND label = 'normal') AS tn
      FROM s)
SELECT abs(e.auc - brute.auc) < 1e-9 AS auc_matches,
       abs(e.accuracy - direct.acc) < 1e-9 AS accuracy_matches,
       e.recall IS NOT DISTINCT FROM direct.tp::float8 / nullif(direct.tp + direct.fn, 0) AS recall_matches,
       e.specificity IS NOT DISTINCT FROM direct.tn::float8 / nullif(direct.tn + direct.fp, 0) AS specificity_matches,
       (SELECT sum(n) FROM confusion c WHERE c.evaluation_id = :eval_id) = 24 AS confusion_total
  FROM evaluations e, brute, direct WHERE e.evaluation_id = :eval_id;

-- the recipe: head first, then every layer at a low rate, with augmentation
\set VERBOSITY terse
SELECT fine_tune('pneumonia_seed_7', 'SELECT image, label, patient FROM train_xrays',
                 head_epochs => 1, epochs => 1, batch_size => 8, group_column => 'patient') AS run3 \gset
\set VERBOSITY default
SELECT status, params->>'recipe' AS recipe, jsonb_array_length(resolved->'phases') AS phases
  FROM runs WHERE run_id = :run3;
SELECT phase, epoch FROM epochs WHERE run_id = :run3 ORDER BY phase, epoch;
-- full fine-tuning (augmentation, every layer) repeats bit for bit from the
-- same start and seed: epoch rows and every weight
SELECT create_model('pneumonia_seed_7_again', 'mobilenet_v2_imagenet', ARRAY['normal', 'pneumonia'], seed => 7) > 0 AS created;
\set VERBOSITY terse
SELECT fine_tune('pneumonia_seed_7_again', 'SELECT image, label, patient FROM train_xrays',
                 head_epochs => 1, epochs => 1, batch_size => 8, group_column => 'patient') AS run3b \gset
\set VERBOSITY default
SELECT count(*) AS epochs,
       bool_and(a.train_loss = b.train_loss AND a.val_loss = b.val_loss AND a.val_accuracy = b.val_accuracy) AS identical
  FROM epochs a JOIN epochs b USING (phase, epoch) WHERE a.run_id = :run3 AND b.run_id = :run3b;
SELECT count(*) AS tensors, bool_and(a.data = b.data) AS same_weights
  FROM weights a JOIN weights b USING (tensor)
 WHERE a.model_id = (SELECT model_id FROM models WHERE name = 'pneumonia_seed_7')
   AND b.model_id = (SELECT model_id FROM models WHERE name = 'pneumonia_seed_7_again');
SELECT drop_model('pneumonia_seed_7_again');
-- after full fine-tuning the backbone changed too
SELECT w.data <> b.data AS backbone_changed
  FROM weights w JOIN models m ON m.model_id = w.model_id AND m.name = 'pneumonia_seed_7'
  JOIN weights b ON b.tensor = w.tensor AND b.model_id = (SELECT model_id FROM models WHERE name = 'mobilenet_v2_imagenet')
 WHERE w.tensor = 'features.0.0.weight';
-- the batch size fine_tune resolves: as given, else 16 for a source of fewer
-- than 1000 rows and 32 from 1000 on (zero epochs: nothing trains)
SELECT fine_tune('pneumonia_seed_7', 'train_xrays', head_epochs => 0, epochs => 0) AS run_small \gset
SELECT fine_tune('pneumonia_seed_7', 'SELECT t.image, t.label FROM train_xrays t, generate_series(1, 1000) g',
                 head_epochs => 0, epochs => 0) AS run_large \gset
SELECT run_id = :run3 AS given, run_id = :run_small AS small, resolved->>'batch_size' AS batch_size,
       params ? 'batch_size' AS in_params
  FROM runs WHERE run_id IN (:run3, :run_small, :run_large) ORDER BY run_id;

-- batch norm stays as it is by default (statistics and affine frozen);
-- batch_norm => 'train' normalises with batch statistics and updates them
SELECT w.tensor, w.data = b.data AS unchanged
  FROM weights w JOIN models m ON m.model_id = w.model_id AND m.name = 'pneumonia_seed_7'
  JOIN weights b ON b.tensor = w.tensor AND b.model_id = (SELECT model_id FROM models WHERE name = 'mobilenet_v2_imagenet')
 WHERE w.tensor IN ('features.5.conv.1.1.running_var', 'features.5.conv.1.1.weight', 'features.5.conv.1.0.weight')
 ORDER BY w.tensor;
\set VERBOSITY terse
SELECT train('pneumonia_seed_7', 'train_xrays', epochs => 1, batch_size => 8, freeze => 'none',
             batch_norm => 'train') > 0 AS trained;
\set VERBOSITY default
SELECT w.tensor, w.data = b.data AS unchanged
  FROM weights w JOIN models m ON m.model_id = w.model_id AND m.name = 'pneumonia_seed_7'
  JOIN weights b ON b.tensor = w.tensor AND b.model_id = (SELECT model_id FROM models WHERE name = 'mobilenet_v2_imagenet')
 WHERE w.tensor IN ('features.5.conv.1.1.running_var', 'features.5.conv.1.1.weight')
 ORDER BY w.tensor;

-- over medtl.train_memory the decoded images spill to a temporary file: the
-- same run, epoch for epoch (full fine-tune with augmentation reads every
-- image each epoch)
SELECT create_model('spill_a', 'mobilenet_v2_imagenet', ARRAY['normal', 'pneumonia'], seed => 3) > 0 AS created;
SELECT create_model('spill_b', 'mobilenet_v2_imagenet', ARRAY['normal', 'pneumonia'], seed => 3) > 0 AS created;
\set VERBOSITY terse
SELECT train('spill_a', 'train_xrays', epochs => 1, batch_size => 8, freeze => 'features.14', augment => true) AS run_mem \gset
SET medtl.train_memory = '1MB';
SELECT train('spill_b', 'train_xrays', epochs => 1, batch_size => 8, freeze => 'features.14', augment => true) AS run_spill \gset
-- the spill obeys temp_file_limit, and a failed run leaves nothing behind
SET temp_file_limit = '1MB';
SELECT train('spill_b', 'train_xrays', epochs => 1, batch_size => 8);
RESET temp_file_limit;
RESET medtl.train_memory;
\set VERBOSITY default
SELECT count(*) AS epochs, bool_and(a.train_loss = b.train_loss AND a.val_loss = b.val_loss) AS identical
  FROM epochs a JOIN epochs b USING (phase, epoch) WHERE a.run_id = :run_mem AND b.run_id = :run_spill;
SELECT count(*) AS same_weights FROM weights a JOIN weights b USING (tensor)
 WHERE a.model_id = (SELECT model_id FROM models WHERE name = 'spill_a')
   AND b.model_id = (SELECT model_id FROM models WHERE name = 'spill_b') AND a.data = b.data;

-- ema => d keeps a moving average of the weights: training follows the
-- weights themselves (the same training losses as without), validation and
-- the stored weights are the average's (other validation losses, other
-- weights for every trained tensor, the frozen ones untouched)
SELECT create_model('ema_off', 'mobilenet_v2_imagenet', ARRAY['normal', 'pneumonia'], seed => 3) > 0 AS created;
SELECT create_model('ema_on', 'mobilenet_v2_imagenet', ARRAY['normal', 'pneumonia'], seed => 3) > 0 AS created;
\set VERBOSITY terse
SELECT train('ema_off', 'train_xrays', epochs => 2, batch_size => 8, freeze => 'features.14') AS run_ema_off \gset
SELECT train('ema_on', 'train_xrays', epochs => 2, batch_size => 8, freeze => 'features.14', ema => 0.9) AS run_ema_on \gset
\set VERBOSITY default
SELECT resolved->>'ema' AS ema FROM runs WHERE run_id = :run_ema_on;
SELECT count(*) AS epochs, bool_and(a.train_loss = b.train_loss) AS same_training,
       bool_and(a.val_loss <> b.val_loss) AS other_validation
  FROM epochs a JOIN epochs b USING (phase, epoch) WHERE a.run_id = :run_ema_off AND b.run_id = :run_ema_on;
SELECT a.data <> c.data AS trained, count(*) AS tensors, count(*) FILTER (WHERE a.data = b.data) AS equal
  FROM weights a JOIN weights b USING (tensor) JOIN weights c USING (tensor)
 WHERE a.model_id = (SELECT model_id FROM models WHERE name = 'ema_off')
   AND b.model_id = (SELECT model_id FROM models WHERE name = 'ema_on')
   AND c.model_id = (SELECT model_id FROM models WHERE name = 'mobilenet_v2_imagenet')
   AND a.tensor !~ '^classifier'
 GROUP BY 1 ORDER BY 1;
SELECT train('ema_on', 'train_xrays', ema => 1);

-- dropout => p drops the head's input in training (torchvision's MobileNetV2
-- has Dropout(0.2) before its classifier): in the head phase on the cached
-- features and in the all-layers phase alike, the masks change the training
-- losses, and the same seed repeats the run bit for bit
SELECT create_model('drop_0', 'mobilenet_v2_imagenet', ARRAY['normal', 'pneumonia'], seed => 3) > 0 AS created;
SELECT create_model('drop_a', 'mobilenet_v2_imagenet', ARRAY['normal', 'pneumonia'], seed => 3) > 0 AS created;
SELECT create_model('drop_b', 'mobilenet_v2_imagenet', ARRAY['normal', 'pneumonia'], seed => 3) > 0 AS created;
\set VERBOSITY terse
SELECT fine_tune('drop_0', 'train_xrays', head_epochs => 2, epochs => 1, batch_size => 8, freeze => 'features.14') AS run_drop_0 \gset
SELECT fine_tune('drop_a', 'train_xrays', head_epochs => 2, epochs => 1, batch_size => 8, freeze => 'features.14', dropout => 0.5) AS run_drop_a \gset
SELECT fine_tune('drop_b', 'train_xrays', head_epochs => 2, epochs => 1, batch_size => 8, freeze => 'features.14', dropout => 0.5) AS run_drop_b \gset
\set VERBOSITY default
SELECT (SELECT resolved->>'dropout' FROM runs WHERE run_id = :run_drop_0) AS default_dropout,
       (SELECT resolved->>'dropout' FROM runs WHERE run_id = :run_drop_a) AS dropout;
SELECT phase, count(*) AS epochs, bool_and(a.train_loss <> z.train_loss) AS other_training,
       bool_and(a.train_loss = b.train_loss AND a.val_loss = b.val_loss) AS repeated
  FROM epochs a JOIN epochs b USING (phase, epoch) JOIN epochs z USING (phase, epoch)
 WHERE a.run_id = :run_drop_a AND b.run_id = :run_drop_b AND z.run_id = :run_drop_0
 GROUP BY phase ORDER BY phase;
SELECT count(*) AS tensors, count(*) FILTER (WHERE a.data = b.data) AS equal
  FROM weights a JOIN weights b USING (tensor)
 WHERE a.model_id = (SELECT model_id FROM models WHERE name = 'drop_a')
   AND b.model_id = (SELECT model_id FROM models WHERE name = 'drop_b');
\set VERBOSITY terse
SELECT train('drop_a', 'train_xrays', dropout => 1);
SELECT train('drop_a', 'train_xrays', dropout => -0.1);
SELECT train('drop_a', 'train_xrays', dropout => 'NaN');
\set VERBOSITY default

-- label_smoothing => e in fine_tune: both phases train on the smoothed
-- targets (other training losses than drop_0's run from the same seed),
-- runs.resolved records it (0 by default), and a value outside [0, 1] is refused
SELECT create_model('ls_a', 'mobilenet_v2_imagenet', ARRAY['normal', 'pneumonia'], seed => 3) > 0 AS created;
\set VERBOSITY terse
SELECT fine_tune('ls_a', 'train_xrays', head_epochs => 2, epochs => 1, batch_size => 8, freeze => 'features.14', label_smoothing => 0.1) AS run_ls_a \gset
\set VERBOSITY default
SELECT (SELECT resolved->>'label_smoothing' FROM runs WHERE run_id = :run_drop_0) AS default_smoothing,
       (SELECT resolved->>'label_smoothing' FROM runs WHERE run_id = :run_ls_a) AS smoothing;
SELECT phase, count(*) AS epochs, bool_and(a.train_loss <> z.train_loss) AS other_training
  FROM epochs a JOIN epochs z USING (phase, epoch)
 WHERE a.run_id = :run_ls_a AND z.run_id = :run_drop_0
 GROUP BY phase ORDER BY phase;
\set VERBOSITY terse
SELECT fine_tune('ls_a', 'train_xrays', head_epochs => 1, epochs => 0, label_smoothing => 1.5);
\set VERBOSITY default

-- head_lr_scale => s: the classifier head trains at lr * s, a param group of
-- its own.  With only the head training, lr 0.002 at scale 2 is the run at
-- lr 0.004 bit for bit (the same losses and weights); in fine_tune it acts in
-- phase 2 only: phase 1 (the head alone at head_lr) repeats drop_0's run of
-- the same seed, phase 2 (every layer after features.14) trains otherwise
SELECT create_model('hs_a', 'mobilenet_v2_imagenet', ARRAY['normal', 'pneumonia'], seed => 3) > 0 AS created;
SELECT create_model('hs_b', 'mobilenet_v2_imagenet', ARRAY['normal', 'pneumonia'], seed => 3) > 0 AS created;
SELECT create_model('hs_c', 'mobilenet_v2_imagenet', ARRAY['normal', 'pneumonia'], seed => 3) > 0 AS created;
\set VERBOSITY terse
SELECT train('hs_a', 'train_xrays', epochs => 2, batch_size => 8, lr => 0.004) AS run_hs_a \gset
SELECT train('hs_b', 'train_xrays', epochs => 2, batch_size => 8, lr => 0.002, head_lr_scale => 2) AS run_hs_b \gset
SELECT fine_tune('hs_c', 'train_xrays', head_epochs => 2, epochs => 1, batch_size => 8, freeze => 'features.14', head_lr_scale => 10) AS run_hs_c \gset
\set VERBOSITY default
SELECT (SELECT resolved->>'head_lr_scale' FROM runs WHERE run_id = :run_hs_a) AS train_default,
       (SELECT resolved->>'head_lr_scale' FROM runs WHERE run_id = :run_drop_0) AS fine_tune_default,
       (SELECT params->>'head_lr_scale' FROM runs WHERE run_id = :run_hs_c) AS given;
SELECT count(*) AS epochs, bool_and(a.train_loss = b.train_loss AND a.val_loss = b.val_loss) AS same_losses
  FROM epochs a JOIN epochs b USING (phase, epoch) WHERE a.run_id = :run_hs_a AND b.run_id = :run_hs_b;
SELECT count(*) AS tensors, count(*) FILTER (WHERE a.data = b.data) AS equal,
       count(*) FILTER (WHERE a.data <> c.data) AS trained
  FROM weights a JOIN weights b USING (tensor) JOIN weights c USING (tensor)
 WHERE a.model_id = (SELECT model_id FROM models WHERE name = 'hs_a')
   AND b.model_id = (SELECT model_id FROM models WHERE name = 'hs_b')
   AND c.model_id = (SELECT model_id FROM models WHERE name = 'mobilenet_v2_imagenet');
SELECT phase, count(*) AS epochs, bool_and(a.train_loss = z.train_loss) AS same_training
  FROM epochs a JOIN epochs z USING (phase, epoch)
 WHERE a.run_id = :run_hs_c AND z.run_id = :run_drop_0
 GROUP BY phase ORDER BY phase;
\set VERBOSITY terse
SELECT train('hs_a', 'train_xrays', head_lr_scale => 0);
SELECT fine_tune('hs_a', 'train_xrays', head_lr_scale => 'NaN');
SELECT fine_tune('hs_a', 'train_xrays', head_lr_scale => 1001);
\set VERBOSITY default

-- warmup_epochs => w: the rate rises linearly over the first w epochs, step
-- by step (from lr/64 to just under lr), then follows the cosine over the
-- rest; in fine_tune it acts in phase 2 only (phase 1 repeats drop_0's run)
SELECT create_model('wu_a', 'mobilenet_v2_imagenet', ARRAY['normal', 'pneumonia'], seed => 3) > 0 AS created;
\set VERBOSITY terse
SELECT fine_tune('wu_a', 'train_xrays', head_epochs => 2, epochs => 2, batch_size => 8, freeze => 'features.14', warmup_epochs => 1) AS run_wu_a \gset
\set VERBOSITY default
SELECT (SELECT resolved->>'warmup_epochs' FROM runs WHERE run_id = :run_drop_0) AS fine_tune_default,
       (SELECT params->>'warmup_epochs' FROM runs WHERE run_id = :run_wu_a) AS given;
SELECT bool_and(a.train_loss = z.train_loss) AS phase1_same
  FROM epochs a JOIN epochs z USING (phase, epoch)
 WHERE a.run_id = :run_wu_a AND z.run_id = :run_drop_0 AND phase = 1;
-- the last step's rate of each epoch: with n steps an epoch, 1e-4 * ((n-1)/n + 1/64)
-- at the end of the warm-up, then the cosine's 1e-4 * (1 + cos(pi (n-1)/n)) / 2
SELECT e.epoch, round((e.lr / 1e-4)::numeric, 9) AS lr_over_base,
       round((CASE WHEN e.epoch = 1 THEN (n - 1.0) / n + 1.0 / 64
                   ELSE (1 + cos(pi() * (n - 1.0) / n)) / 2 END)::numeric, 9) AS expected
  FROM epochs e,
       LATERAL (SELECT ceil((r.resolved->'phases'->1->>'n_train')::numeric / 8)::int AS n FROM runs r WHERE r.run_id = e.run_id) s
 WHERE e.run_id = :run_wu_a AND e.phase = 2 ORDER BY e.epoch;
\set VERBOSITY terse
SELECT fine_tune('wu_a', 'train_xrays', epochs => 5, warmup_epochs => 6);
SELECT train('wu_a', 'train_xrays', epochs => 2, warmup_epochs => -1);
SELECT train('wu_a', 'train_xrays', warmup_epochs => NULL);
\set VERBOSITY default

-- fine_tune's all-layers phase takes train's augmentation options (flip,
-- rotation, brightness, contrast, crop_scale; defaults true, 10, 0.2, 0.2,
-- 0.8): with every one off it is the run of augment => false, bit for bit,
-- and drop_0's run (the defaults, same seeds) trains otherwise in phase 2
-- only (phase 1 runs on cached features, never augmented); runs record
-- what was given and what phase 2 used; out-of-range values are refused
SELECT create_model('aug_off', 'mobilenet_v2_imagenet', ARRAY['normal', 'pneumonia'], seed => 3) > 0 AS created;
SELECT create_model('aug_zero', 'mobilenet_v2_imagenet', ARRAY['normal', 'pneumonia'], seed => 3) > 0 AS created;
\set VERBOSITY terse
SELECT fine_tune('aug_off', 'train_xrays', head_epochs => 2, epochs => 1, batch_size => 8, freeze => 'features.14', augment => false) AS run_aug_off \gset
SELECT fine_tune('aug_zero', 'train_xrays', head_epochs => 2, epochs => 1, batch_size => 8, freeze => 'features.14',
                 flip => false, rotation => 0, brightness => 0, contrast => 0, crop_scale => 1) AS run_aug_zero \gset
\set VERBOSITY default
SELECT a.phase, bool_and(a.train_loss = b.train_loss AND a.val_loss = b.val_loss) AS same_as_augment_off,
       bool_and(a.train_loss = z.train_loss) AS same_as_defaults
  FROM epochs a JOIN epochs b USING (phase, epoch) JOIN epochs z USING (phase, epoch)
 WHERE a.run_id = :run_aug_zero AND b.run_id = :run_aug_off AND z.run_id = :run_drop_0
 GROUP BY a.phase ORDER BY a.phase;
SELECT r.params->>'crop_scale' AS given_crop_scale, r.params->>'flip' AS given_flip,
       r.resolved->>'rotation' AS rotation, r.resolved->>'crop_scale' AS crop_scale,
       d.resolved->>'rotation' AS default_rotation, d.resolved->>'crop_scale' AS default_crop_scale,
       d.resolved->>'flip' AS default_flip, o.resolved->>'flip' AS augment_off_flip
  FROM runs r, runs d, runs o
 WHERE r.run_id = :run_aug_zero AND d.run_id = :run_drop_0 AND o.run_id = :run_aug_off;
\set VERBOSITY terse
SELECT fine_tune('aug_off', 'train_xrays', crop_scale => 0);
SELECT fine_tune('aug_off', 'train_xrays', rotation => 'NaN');
SELECT fine_tune('aug_off', 'train_xrays', flip => NULL);
SELECT train('aug_off', 'train_xrays', freeze => 'none', brightness => -0.1);
SELECT train('aug_off', 'train_xrays', freeze => 'none', contrast => 'Infinity');
SELECT train('aug_off', 'train_xrays', freeze => 'none', rotation => 181);
SELECT train('aug_off', 'train_xrays', freeze => 'none', crop_scale => NULL);
\set VERBOSITY default
SELECT count(*) AS runs_of_aug_off FROM runs WHERE model_id = (SELECT model_id FROM models WHERE name = 'aug_off');

-- from scratch (no pretrained weights) with the same head init
SELECT create_model('scratch_net', 'resnet18', ARRAY['normal', 'pneumonia'], pretrained => false) > 0 AS created;
SELECT parent_id IS NULL AS no_parent, source FROM models WHERE name = 'scratch_net';

-- training's default kernels (medtl.conv_kernels = auto) run dense 3x3
-- stride-1 convolutions, batches of two or more, through oneDNN's Winograd
-- kernels where it has them (AVX-512); medtl.conv_kernels = direct keeps
-- them on the direct ones.  8 rows in one batch, so each epoch is one step:
-- the first epoch's loss is the forward pass, the second's follows one
-- update, and both stay within 1e-4 of the direct kernels' (test_grad holds each
-- pass to 1e-5 of them and ResNet-18's gradients to finite differences).
-- Longer runs from scratch are no test: with batch statistics on 8 small
-- images a 1e-6 difference grows by percents within two epochs, as it does
-- between 1 and 2 threads with the direct kernels
SELECT create_model('wino_a', 'resnet18', ARRAY['normal', 'pneumonia'], pretrained => false,
                    input_size => 64) > 0 AS created;
SELECT create_model('wino_b', 'resnet18', ARRAY['normal', 'pneumonia'], pretrained => false,
                    input_size => 64) > 0 AS created;
SELECT (runtime_info()->>'winograd_convolutions')::bigint AS wino_before \gset
SET medtl.conv_kernels = direct;
SELECT train('wino_a', 'SELECT image, label FROM train_xrays WHERE id % 5 = 0', epochs => 2, batch_size => 8,
             freeze => 'none', augment => false, validation => 0, optimizer => 'sgd', lr => 0.01) AS run_wino_a \gset
SELECT (runtime_info()->>'winograd_convolutions')::bigint = :wino_before AS direct_only;
RESET medtl.conv_kernels;
SELECT train('wino_b', 'SELECT image, label FROM train_xrays WHERE id % 5 = 0', epochs => 2, batch_size => 8,
             freeze => 'none', augment => false, validation => 0, optimizer => 'sgd', lr => 0.01) AS run_wino_b \gset
SELECT (runtime_info()->>'winograd_convolutions')::bigint > :wino_before
           OR runtime_info()->>'cpu_features' !~ 'avx512f'
           OR runtime_info()->>'conv_kernels' !~ '^oneDNN [0-9]' AS winograd_trained;
SELECT count(*) AS epochs, bool_and(abs(a.train_loss - b.train_loss) <= 1e-4 * abs(a.train_loss)) AS close_losses
  FROM epochs a JOIN epochs b USING (phase, epoch)
 WHERE a.run_id = :run_wino_a AND b.run_id = :run_wino_b;
SELECT drop_model('wino_a');
SELECT drop_model('wino_b');

-- errors, each leaving the model as it was
\set VERBOSITY terse
SELECT train('no_such_model', 'train_xrays');
SELECT train('pneumonia', 'no_such_table');
SELECT train('pneumonia', 'SELECT image FROM train_xrays');
SELECT train('pneumonia', 'SELECT image, label FROM train_xrays WHERE false');
SELECT train('pneumonia', 'SELECT image, ''covid'' AS label FROM train_xrays');
SELECT train('pneumonia', 'SELECT image, id AS label FROM train_xrays');
SELECT train('pneumonia', 'SELECT image, NULL::text AS label FROM train_xrays');
SELECT train('pneumonia', 'SELECT label AS image, label FROM train_xrays');
SELECT train('pneumonia', 'SELECT CASE WHEN id = 3 THEN ''\x0badc0de''::bytea ELSE image END AS image, label FROM train_xrays');
SELECT train('pneumonia', 'train_xrays', optimizer => 'rmsprop');
SELECT train('pneumonia', 'train_xrays', epochs => 0);
SELECT train('pneumonia', 'train_xrays', freeze => 'features.99');
SELECT train('pneumonia', 'train_xrays', class_weight => ARRAY[1, 2, 3]::real[]);
SELECT train('pneumonia', 'train_xrays', batch_norm => 'sometimes');
SELECT create_model('x', 'no_such_backbone', ARRAY['a', 'b']);
SELECT create_model('x', 'mobilenet_v2_imagenet', ARRAY['a']);
SELECT create_model('x', 'mobilenet_v2_imagenet', ARRAY['a', 'a']);
SELECT create_model('pneumonia', 'mobilenet_v2_imagenet', ARRAY['a', 'b']);
-- a bad row can be skipped when asked
SELECT train('pneumonia', 'SELECT CASE WHEN id = 3 THEN ''\x0badc0de''::bytea ELSE image END AS image, label FROM train_xrays',
             epochs => 1, skip_bad_rows => true) > 0 AS trained_without_row_3;
-- a statement_timeout mid-run rolls back: weights and runs exactly as before
SELECT count(*) AS runs_before FROM runs \gset
CREATE TEMP TABLE before AS SELECT w.tensor, md5(w.data) AS h FROM weights w JOIN models m USING (model_id) WHERE m.name = 'pneumonia';
SET statement_timeout = '1500ms';
SELECT train('pneumonia', 'train_xrays', epochs => 50, freeze => 'none', batch_size => 4);
RESET statement_timeout;
\set VERBOSITY default
SELECT count(*) = :runs_before AS no_new_run,
       (SELECT count(*) FROM before b JOIN weights w ON w.tensor = b.tensor AND md5(w.data) = b.h
          AND w.model_id = (SELECT model_id FROM models WHERE name = 'pneumonia')) = 314 AS weights_unchanged
  FROM runs;
