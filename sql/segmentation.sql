-- segmentation: a U-Net on the pretrained MobileNetV2 encoder, trained and
-- scored from SQL on Kvasir-SEG polyp masks (read from ../shared)
\getenv shared MEDTL_SHARED
SET search_path = public, medtl;
\set kv :shared '/data/kvasir_seg/'
CREATE TABLE kv_manifest (image text, mask text, split text);
\set manifest :kv 'manifest.csv'
COPY kv_manifest FROM :'manifest' WITH (FORMAT csv, HEADER);
SELECT split, count(*) FROM kv_manifest GROUP BY split ORDER BY split;
-- 24 training and 8 test pairs, the first by name
CREATE TABLE kv AS
SELECT split, row_number() OVER (PARTITION BY split ORDER BY image) AS id,
       read_server_file(:'kv' || image) AS image, read_server_file(:'kv' || mask) AS mask
  FROM (SELECT *, row_number() OVER (PARTITION BY split ORDER BY image) AS k FROM kv_manifest) m
 WHERE (split = 'train' AND k <= 24) OR (split = 'test' AND k <= 8);
CREATE VIEW kv_train AS SELECT image, mask FROM kv WHERE split = 'train';
CREATE VIEW kv_test AS SELECT id, image, mask FROM kv WHERE split = 'test';

-- a U-Net whose encoder is the backbone: its tensors under encoder.*, the rest new
SELECT create_model('polyp', 'mobilenet_v2_imagenet', ARRAY['background', 'polyp'],
                    task => 'segmentation', input_size => 64) > 0 AS created;
SELECT m.arch, m.task, m.num_classes, m.input_size, p.name AS parent, m.metadata->>'upsample' AS upsample
  FROM models m JOIN models p ON p.model_id = m.parent_id WHERE m.name = 'polyp';
SELECT count(*) FILTER (WHERE w.tensor LIKE 'encoder.%') > 0 AS has_encoder,
       count(*) FILTER (WHERE w.tensor LIKE 'decoder.%') > 0 AS has_decoder,
       count(*) FILTER (WHERE w.tensor LIKE 'segmentation_head.%') AS head_tensors,
       count(*) FILTER (WHERE w.tensor LIKE 'encoder.classifier%') AS backbone_classifier
  FROM weights w JOIN models m USING (model_id) WHERE m.name = 'polyp';
-- every encoder tensor is the backbone's, byte for byte
SELECT count(*) AS encoder_tensors, bool_and(e.data = b.data AND e.shape = b.shape) AS same_as_backbone
  FROM weights e JOIN models m ON m.model_id = e.model_id AND m.name = 'polyp'
  JOIN weights b ON b.tensor = substr(e.tensor, 9)
  JOIN models bm ON bm.model_id = b.model_id AND bm.name = 'mobilenet_v2_imagenet'
 WHERE e.tensor LIKE 'encoder.%';
-- the same seed gives the same decoder
SELECT create_model('polyp_again', 'mobilenet_v2_imagenet', ARRAY['background', 'polyp'],
                    task => 'segmentation', input_size => 64) > 0 AS created;
SELECT bool_and(a.data = b.data) AS same_init
  FROM weights a JOIN models ma ON ma.model_id = a.model_id AND ma.name = 'polyp'
  JOIN weights b ON b.tensor = a.tensor
  JOIN models mb ON mb.model_id = b.model_id AND mb.name = 'polyp_again'
 WHERE a.tensor NOT LIKE 'encoder.%';
-- transposed-convolution upsampling and a resnet18 encoder from scratch
SELECT create_model('polyp_tconv', 'resnet18', ARRAY['background', 'polyp'], task => 'segmentation',
                    pretrained => false, input_size => 64, upsample => 'transpose') > 0 AS created;
SELECT arch FROM models WHERE name = 'polyp_tconv';

-- scoring before training: a PNG mask at the image's own size, 0/255
SELECT (image_info(segment('polyp', image))).* FROM kv_test WHERE id = 1;
SELECT dice(segment('polyp', image), segment('polyp', image)) AS self_dice FROM kv_test WHERE id = 1;
SELECT array_dims(segment_proba('polyp', image)) AS dims,
       (SELECT min(p) >= 0 AND max(p) <= 1 FROM unnest(segment_proba('polyp', image)) p) AS in_range
  FROM kv_test WHERE id = 1;

-- training: images with masks; a NOTICE per epoch; val_dice per epoch
SET client_min_messages = warning;
SELECT train('polyp', 'kv_train', epochs => 2, batch_size => 8, freeze => 'none') AS run_id \gset
RESET client_min_messages;
SELECT status, n_train, n_val, resolved->>'loss' AS loss, resolved->>'mask_column' AS mask_column,
       resolved->'phases'->0->>'keep_best' AS keep_best
  FROM runs WHERE run_id = :run_id;
SELECT epoch, train_loss > 0 AS loss_positive, val_dice BETWEEN 0 AND 1 AS dice_ok,
       val_accuracy BETWEEN 0 AND 1 AS pixel_acc_ok, val_auc IS NULL AS no_auc
  FROM epochs WHERE run_id = :run_id ORDER BY epoch;
-- the decoder trained
SELECT bool_or(a.data <> b.data) AS decoder_trained
  FROM weights a JOIN models ma ON ma.model_id = a.model_id AND ma.name = 'polyp'
  JOIN weights b ON b.tensor = a.tensor
  JOIN models mb ON mb.model_id = b.model_id AND mb.name = 'polyp_again'
 WHERE a.tensor LIKE 'decoder.%';
-- encoder frozen ('backbone'): the encoder stays the backbone's
SET client_min_messages = warning;
SELECT train('polyp_again', 'kv_train', epochs => 1, batch_size => 8, loss => 'dice') > 0 AS trained;
RESET client_min_messages;
SELECT bool_and(e.data = b.data) AS encoder_kept
  FROM weights e JOIN models m ON m.model_id = e.model_id AND m.name = 'polyp_again'
  JOIN weights b ON b.tensor = substr(e.tensor, 9)
  JOIN models bm ON bm.model_id = b.model_id AND bm.name = 'mobilenet_v2_imagenet'
 WHERE e.tensor LIKE 'encoder.%' AND e.tensor NOT LIKE '%running%';

-- evaluate: mean Dice and IoU, pixel metrics, one row per image
SELECT evaluate('polyp', 'kv_test') AS eval_id \gset
SELECT n, positive_label, dice BETWEEN 0 AND 1 AS dice_ok, iou <= dice AS iou_le_dice,
       accuracy BETWEEN 0 AND 1 AS pixel_acc_ok, recall BETWEEN 0 AND 1 AS sensitivity_ok,
       specificity BETWEEN 0 AND 1 AS specificity_ok, auc IS NULL AS no_auc
  FROM evaluations WHERE evaluation_id = :eval_id;
SELECT count(*) AS images, bool_and(width = 256 AND height = 256) AS sizes
  FROM image_metrics WHERE evaluation_id = :eval_id;
-- the evaluation's per-image Dice is medtl.dice of segment() against the truth
SELECT count(*) AS images,
       max(abs(i.dice - dice(segment('polyp', t.image), t.mask))) < 1e-12 AS same_dice,
       max(abs(i.iou - iou(segment('polyp', t.image), t.mask))) < 1e-12 AS same_iou
  FROM kv_test t JOIN image_metrics i ON i.evaluation_id = :eval_id AND i.row_number = t.id;
SELECT abs(e.dice - (SELECT mean_dice(segment('polyp', image), mask) FROM kv_test)) < 1e-12 AS mean_dice_agrees
  FROM evaluations e WHERE evaluation_id = :eval_id;
SELECT class_index, class, support FROM class_metrics WHERE evaluation_id = :eval_id ORDER BY class_index;

-- sliding window: input-size tiles (64) at the image's own resolution,
-- overlapping, their probabilities blended; the mask is still at the image's size
SELECT (image_info(segment('polyp', image, mode => 'sliding'))).* FROM kv_test WHERE id = 1;
SELECT (mask_info(segment('polyp', image, mode => 'sliding'))).distinct_values <@ ARRAY[0, 255] AS binary_mask,
       dice(segment('polyp', image, mode => 'sliding'), segment('polyp', image, mode => 'sliding')) AS self_dice,
       dice(segment('polyp', image, mode => 'sliding', blend => 'gaussian'),
            segment('polyp', image, mode => 'sliding', blend => 'gaussian')) AS self_dice_gaussian
  FROM kv_test WHERE id = 1;
SELECT array_dims(p) AS dims, (SELECT min(v) >= 0 AND max(v) <= 1 FROM unnest(p) v) AS in_range
  FROM (SELECT segment_proba('polyp', image, mode => 'sliding', overlap => 0.5) AS p FROM kv_test WHERE id = 1) s;
-- scaled by 1/4, a 256x256 image is one 64x64 tile: exactly what the resize mode computes
SELECT count(*) AS images,
       bool_and(segment('polyp', image, mode => 'sliding', scale => 0.25) = segment('polyp', image)) AS same_masks,
       bool_and(segment_proba('polyp', image, mode => 'sliding', scale => 0.25) = segment_proba('polyp', image)) AS same_proba
  FROM kv_test;
-- an image of exactly the input size: sliding = resize (gaussian weights divide out to within rounding)
CREATE TEMP TABLE synth AS
SELECT w, h, mask_png(ARRAY(SELECT ARRAY(SELECT (x * 37 + y * 11 + (x * y) % 53) % 256
                                           FROM generate_series(0, w - 1) x)
                              FROM generate_series(0, h - 1) y)) AS image
  FROM (VALUES (64, 64), (100, 70), (40, 30), (300, 64)) v(w, h);
SELECT segment('polyp', image, mode => 'sliding') = segment('polyp', image) AS same_mask,
       segment_proba('polyp', image, mode => 'sliding') = segment_proba('polyp', image) AS same_proba,
       (SELECT max(abs(a - b)) < 1e-6
          FROM unnest(segment_proba('polyp', image, mode => 'sliding', blend => 'gaussian'),
                      segment_proba('polyp', image)) AS u(a, b)) AS gaussian_close
  FROM synth WHERE w = 64 AND h = 64;
-- non-square, smaller than a tile (padded, never part of the output), one tile high; overlaps 0 and 0.9
SELECT w, h, (image_info(segment('polyp', image, mode => 'sliding'))).width AS mask_w,
       (image_info(segment('polyp', image, mode => 'sliding'))).height AS mask_h,
       array_dims(segment_proba('polyp', image, mode => 'sliding', overlap => 0)) AS dims_overlap_0,
       array_dims(segment_proba('polyp', image, mode => 'sliding', overlap => 0.9, blend => 'gaussian')) AS dims_overlap_09
  FROM synth ORDER BY w, h;
-- evaluate passes the mode through: its per-image Dice is that of the sliding masks
SELECT evaluate('polyp', 'kv_test', mode => 'sliding', overlap => 0.5) AS slide_eval \gset
SELECT count(*) AS images,
       max(abs(i.dice - dice(segment('polyp', t.image, mode => 'sliding', overlap => 0.5), t.mask))) < 1e-12 AS same_dice
  FROM kv_test t JOIN image_metrics i ON i.evaluation_id = :slide_eval AND i.row_number = t.id;
-- bad options: 22023 (and a scaled image over medtl.max_image_pixels: 54000)
CREATE FUNCTION pg_temp.try_seg(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE q;
    RETURN 'ok';
EXCEPTION WHEN others THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END
$$;
SELECT q AS call, pg_temp.try_seg('SELECT ' || q || ' FROM kv_test WHERE id = 1') AS result
  FROM (VALUES ('segment(''polyp'', image, mode => ''tiles'')'),
               ('segment(''polyp'', image, mode => ''sliding'', overlap => 0.95)'),
               ('segment(''polyp'', image, mode => ''sliding'', overlap => -0.1)'),
               ('segment_proba(''polyp'', image, mode => ''sliding'', overlap => ''NaN'')'),
               ('segment(''polyp'', image, mode => ''sliding'', scale => 0)'),
               ('segment(''polyp'', image, scale => 2)'),
               ('segment(''polyp'', image, mode => ''sliding'', blend => ''linear'')'),
               ('segment(''polyp'', image, mode => NULL) IS NULL'),
               ('evaluate(''polyp'', ''kv_test'', mode => ''sliding'', overlap => 1)'),
               ('evaluate(''mobilenet_v2_imagenet'', ''kv_test'', mode => ''sliding'')')) v(q);
SET medtl.max_image_pixels = 100000;
SELECT pg_temp.try_seg('SELECT segment(''polyp'', image, mode => ''sliding'', scale => 2) FROM kv_test WHERE id = 1') AS over_budget;
RESET medtl.max_image_pixels;
-- a long tiling stops on statement_timeout: the image scaled by 16 is 4096x4096,
-- 85x85 tiles; the cancel is noticed between forward passes
SELECT clock_timestamp() AS t0 \gset
SET statement_timeout = 1000;
SELECT segment('polyp', image, mode => 'sliding', scale => 16) FROM kv_test WHERE id = 1;
RESET statement_timeout;
SELECT clock_timestamp() - :'t0'::timestamptz < interval '15 seconds' AS stopped_promptly;
SELECT dice(segment('polyp', image, mode => 'sliding'), segment('polyp', image, mode => 'sliding')) AS still_up
  FROM kv_test WHERE id = 1;

-- export and import: the same masks from the re-imported model
SELECT import_model('polyp_copy', 'unet_mobilenet_v2', export_model('polyp')) > 0 AS imported;
SELECT task, labels, input_size FROM models WHERE name = 'polyp_copy';
SELECT bool_and(segment('polyp_copy', image) = segment('polyp', image)) AS same_masks FROM kv_test;
SELECT drop_model('polyp_copy');

-- bad input: each a clear error naming the row
\set VERBOSITY terse
CREATE TABLE kv_bad (image bytea, mask bytea);
-- a mask of the wrong size
INSERT INTO kv_bad SELECT image, decode('iVBORw0KGgoAAAANSUhEUgAAAIAAAACACAAAAADmVT4XAAAAJklEQVR42u3BAQEAAACCIP+vbkhAAQAAAAAAAAAAAAAAAAAAAO8GQIAAAR6FpxMAAAAASUVORK5CYII=', 'base64')
  FROM kv_test WHERE id = 1;
SELECT train('polyp', 'kv_bad', epochs => 1);
SELECT evaluate('polyp', 'kv_bad');
-- a non-binary mask for a binary model
TRUNCATE kv_bad;
INSERT INTO kv_bad SELECT image, decode('iVBORw0KGgoAAAANSUhEUgAAAQAAAAEACAAAAAB5Gfe6AAAAjUlEQVR42u3SwQkAMAgEQZPKU3qaOERw5n0gLFYBAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAk52OIy+8S7rbP0AAAQQQQAABBBBAAAEEEEAAAQQQQAABBBBAAAEEEEAAAQQQQAABBBBAAAEEEEAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAIAuH2W1AVBMrgsaAAAAAElFTkSuQmCC', 'base64')
  FROM kv_test WHERE id = 1;
SELECT train('polyp', 'kv_bad', epochs => 1);
-- an image with no mask; a corrupt mask
TRUNCATE kv_bad;
INSERT INTO kv_bad SELECT image, NULL FROM kv_test WHERE id = 1;
SELECT train('polyp', 'kv_bad', epochs => 1);
INSERT INTO kv_bad SELECT image, substr(mask, 1, 40) FROM kv_test WHERE id = 2;
SELECT train('polyp', 'kv_bad', epochs => 1, skip_bad_rows => true);
-- no mask column
SELECT train('polyp', 'kv_test', epochs => 1, mask_column => 'nope');
-- an empty mask (no polyp) is fine: evaluated with the empty case rule
TRUNCATE kv_bad;
INSERT INTO kv_bad SELECT image, decode('iVBORw0KGgoAAAANSUhEUgAAAQAAAAEACAAAAAB5Gfe6AAAAVElEQVR42u3BAQEAAACAkP6v7ggKAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAGAEPAAEccgnDAAAAAElFTkSuQmCC', 'base64')
  FROM kv_test WHERE id = 1;
SELECT evaluate('polyp', 'kv_bad') AS empty_eval \gset
SELECT e.n, i.truth_pixels, i.dice = CASE WHEN i.predicted_pixels = 0 THEN 1 ELSE 0 END AS empty_rule,
       i.dice = dice(segment('polyp', b.image), b.mask) AS same_as_dice
  FROM evaluations e JOIN image_metrics i USING (evaluation_id), kv_bad b
 WHERE e.evaluation_id = :empty_eval;
-- three classes: synthetic 64x64 scans whose columns are dark (class 0),
-- bright (class 1) or mid-gray (class 2), masks holding the class indexes
CREATE TABLE stripes AS
SELECT i, mask_png(array_agg(img ORDER BY y)) AS image, mask_png(array_agg(msk ORDER BY y)) AS mask
  FROM (SELECT i, y, array_agg(CASE c WHEN 0 THEN 20 WHEN 1 THEN 230 ELSE 120 END ORDER BY x) AS img,
               array_agg(c ORDER BY x) AS msk
          FROM generate_series(1, 12) i, generate_series(0, 63) y, generate_series(0, 63) x,
               LATERAL (SELECT ((x + 7 * i) / 22) % 3 AS c) k
         GROUP BY i, y) r
 GROUP BY i;
SELECT create_model('stripes', 'resnet18', ARRAY['dark', 'bright', 'gray'], task => 'segmentation',
                    pretrained => false, input_size => 64) > 0 AS created;
SET client_min_messages = warning;
SELECT train('stripes', 'SELECT image, mask FROM stripes WHERE i <= 10', epochs => 2, batch_size => 4,
             freeze => 'none', validation => 0) > 0 AS trained;
RESET client_min_messages;
SELECT (mask_info(segment('stripes', image))).distinct_values <@ ARRAY[0, 1, 2] AS class_indexes,
       array_dims(segment_proba('stripes', image)) AS proba_dims
  FROM stripes WHERE i = 11;
SELECT evaluate('stripes', 'SELECT image, mask FROM stripes WHERE i > 10') AS stripes_eval \gset
SELECT e.n, e.positive_label IS NULL AS no_positive, count(c.*) AS class_rows,
       bool_and(c.support = 2) AS every_class_in_both
  FROM evaluations e JOIN class_metrics c USING (evaluation_id)
 WHERE e.evaluation_id = :stripes_eval GROUP BY e.n, e.positive_label;
-- a value that is no class of a three-class model
SELECT train('stripes', 'SELECT image, mask_png(ARRAY[ARRAY[0, 3], ARRAY[1, 2]]) AS mask FROM (SELECT mask_png(ARRAY[ARRAY[0, 3], ARRAY[1, 2]]) AS image) s', epochs => 1);
SELECT drop_model('stripes');

-- wrong model kinds, options and architectures
SELECT predict('polyp', image) FROM kv_test WHERE id = 1;
SELECT predict_proba('polyp', image) FROM kv_test WHERE id = 1;
SELECT segment('mobilenet_v2_imagenet', image) FROM kv_test WHERE id = 1;
SELECT train('polyp', 'kv_train', epochs => 1, loss => 'focal');
SELECT create_model('bad_seg', 'densenet121', ARRAY['background', 'polyp'], task => 'segmentation', pretrained => false);
SELECT create_model('bad_seg', 'mobilenet_v2_imagenet', ARRAY['background', 'polyp'], task => 'segmentation', input_size => 100);
SELECT create_model('bad_seg', 'mobilenet_v2_imagenet', ARRAY['polyp'], task => 'segmentation');
SELECT create_model('bad_seg', 'mobilenet_v2_imagenet', ARRAY['background', 'polyp'], task => 'segmentation', upsample => 'nearest');
SELECT create_model('bad_seg', 'mobilenet_v2_imagenet', ARRAY['background', 'polyp'], task => 'detection');
SELECT count(*) AS none_created FROM models WHERE name = 'bad_seg';
-- a cancelled run leaves the model as it was
SELECT md5(string_agg(encode(data, 'hex'), '' ORDER BY tensor)) AS before
  FROM weights JOIN models USING (model_id) WHERE name = 'polyp' \gset
SET client_min_messages = warning;
SET statement_timeout = 2000;
SELECT train('polyp', 'kv_train', epochs => 50, batch_size => 4, freeze => 'none');
RESET statement_timeout;
RESET client_min_messages;
SELECT md5(string_agg(encode(data, 'hex'), '' ORDER BY tensor)) = :'before' AS unchanged
  FROM weights JOIN models USING (model_id) WHERE name = 'polyp';
\set VERBOSITY default
SELECT dice(segment('polyp', image), segment('polyp', image)) AS still_up FROM kv_test WHERE id = 1;
SELECT drop_model('polyp_again');
SELECT drop_model('polyp_tconv');
