-- bad input: each a clean ERROR with its SQLSTATE; the backend stays up
\getenv shared MEDTL_SHARED
SET search_path = public, medtl;
\set VERBOSITY sqlstate
-- random bytes, empty input, a truncated JPEG and PNG
SELECT predict('mobilenet_v2_imagenet', '\xdeadbeef'::bytea);
SELECT predict('mobilenet_v2_imagenet', ''::bytea);
SELECT predict('mobilenet_v2_imagenet', substr(image, 1, octet_length(image) / 2)) FROM xrays WHERE id = 1;
SELECT predict('mobilenet_v2_imagenet', substr(image, 1, 2000)) FROM samples WHERE name = 'cat.png';
SELECT predict('mobilenet_v2_imagenet', substr(image, 1, 40)) FROM samples WHERE name = 'cat.png';
-- a PNG whose header claims 100000 x 100000 (IHDR with a valid CRC)
SELECT medtl.image_info('\x89504e470d0a1a0a0000000d49484452000186a0000186a0080200000027309c9f'::bytea);
SELECT predict('mobilenet_v2_imagenet', '\x89504e470d0a1a0a0000000d49484452000186a0000186a0080200000027309c9f0000000049454e44ae426082'::bytea);
-- a JPEG whose frame header claims 0 x 0, and one that claims 60000 x 60000
SELECT predict('mobilenet_v2_imagenet', overlay(image placing '\x00000000'::bytea from position('\xffc0'::bytea in image) + 5))
  FROM xrays WHERE id = 1;
SELECT predict('mobilenet_v2_imagenet', overlay(image placing '\xea60ea60'::bytea from position('\xffc0'::bytea in image) + 5))
  FROM xrays WHERE id = 1;
-- a PNG with a corrupted CRC
SELECT predict('mobilenet_v2_imagenet', overlay(image placing '\x00000000'::bytea from 30)) FROM samples WHERE name = 'bird_224.png';
-- within the decode limit GUC
SET medtl.max_image_pixels = 10000;
SELECT predict('mobilenet_v2_imagenet', image) FROM samples WHERE name = 'bird.png';
RESET medtl.max_image_pixels;
-- an unknown model
SELECT predict('no_such_model', image) FROM samples WHERE name = 'bird.png';
SELECT embed('', image) FROM samples WHERE name = 'bird.png';
SELECT predict_topk('mobilenet_v2_imagenet', image, 0) FROM samples WHERE name = 'bird.png';
-- statement_timeout (and cancel) stop a long scoring query between layers
SET statement_timeout = 50;
SELECT count(predict('mobilenet_v2_imagenet', image)) FROM xrays, generate_series(1, 20);
RESET statement_timeout;
-- NULLs into the functions that are not STRICT
SELECT medtl.safetensors_info(NULL) IS NULL AS null_info, medtl.safetensors_info(NULL, 'resnet18') IS NULL AS null_info_arch;
SELECT medtl._train_run(1, 'm', 's', 'image', 'label', NULL, NULL, 1, NULL, 32, 0.001, 'adamw', 0, 0.9, 'cosine',
       0, 5, 0.1, 'backbone', false, 0, 0, 0, 1, 'none', NULL, 0, 0, 0.1, 'val_auc', NULL, 42, false, 'frozen', NULL, 0, 0, 1);
SELECT medtl.runtime_info() IS NOT NULL AS runtime_info;
-- input sizes an architecture cannot take (vit_b_16: multiples of 16, at most 1024)
SELECT create_model('vit_40', 'vit_b_16', ARRAY['a', 'b'], pretrained => false, input_size => 40);
SELECT create_model('vit_2048', 'vit_b_16', ARRAY['a', 'b'], pretrained => false, input_size => 2048);
SELECT count(*) AS none_created FROM medtl.models WHERE name LIKE 'vit%';
-- the backend is still here and still scores
\set VERBOSITY default
SELECT predict('mobilenet_v2_imagenet', image) AS still_up FROM samples WHERE name = 'bird_224.png';
