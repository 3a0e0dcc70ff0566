-- import: safetensors bytes become a model row and one row per tensor
\getenv shared MEDTL_SHARED
\set mdir :shared '/models/mobilenet_v2_imagenet/'
\set wfile :mdir 'mobilenet_v2_imagenet.safetensors'
\set lfile :mdir 'labels.txt'
CREATE TABLE files AS
SELECT medtl.read_server_file(:'wfile') AS weights,
       string_to_array(rtrim(convert_from(medtl.read_server_file(:'lfile'), 'UTF8'), E'\n'), E'\n') AS labels;
SELECT cardinality(labels), labels[1], labels[1000] FROM files;

-- what the file says about itself
SELECT i->'tensors' AS tensors, i->'metadata'->>'arch' AS arch, i->'metadata'->>'mean' AS mean
  FROM (SELECT medtl.safetensors_info(weights) AS i FROM files) s;
SELECT (medtl.safetensors_info(weights, 'mobilenet_v2'))->'num_classes' AS num_classes FROM files;

SELECT medtl.import_model('mobilenet_v2_imagenet', 'mobilenet_v2', weights,
                          labels => labels, padding => 'tf_same') > 0 AS imported
  FROM files;
SELECT name, arch, task, num_classes, input_size, mean, std, padding, owner = current_user AS mine,
       sha256 = '900974256b16ea04a8a7a118b4af369b1dc7140adb77aa55afb5680b5c383209' AS sha_ok,
       labels[20] AS label_19, metadata->>'license' AS license
  FROM medtl.models WHERE name = 'mobilenet_v2_imagenet';
SELECT count(*) AS tensors, sum(octet_length(data)) AS bytes,
       count(*) FILTER (WHERE dtype = 'I64') AS counters
  FROM medtl.weights JOIN medtl.models USING (model_id) WHERE name = 'mobilenet_v2_imagenet';
SELECT tensor, shape, dtype FROM medtl.weights JOIN medtl.models USING (model_id)
 WHERE name = 'mobilenet_v2_imagenet' AND tensor IN ('features.0.0.weight', 'classifier.1.weight',
       'features.1.conv.0.1.num_batches_tracked') ORDER BY tensor;
-- the first value as stored (little-endian float32 -0.5095339)
SELECT substr(data, 1, 4) AS first_bytes FROM medtl.weights JOIN medtl.models USING (model_id)
 WHERE name = 'mobilenet_v2_imagenet' AND tensor = 'features.0.0.weight';

-- the same padding-symmetric twin, also as a server-side file import
SELECT medtl.import_model_file('mobilenet_v2_symmetric', 'mobilenet_v2', :'wfile',
                               labels => (SELECT labels FROM files)) > 0 AS imported;
SELECT name, padding, source LIKE 'file:%' AS from_file FROM medtl.models ORDER BY model_id;

-- errors: each names what is wrong
-- a name that exists
SELECT medtl.import_model('mobilenet_v2_imagenet', 'mobilenet_v2', weights) FROM files;
-- replace => true replaces it
SELECT medtl.import_model('mobilenet_v2_symmetric', 'mobilenet_v2', weights, labels => labels,
                          replace => true) > 0 AS replaced FROM files;
SELECT count(*) FROM medtl.models;
-- unknown architecture
SELECT medtl.import_model('x', 'alexnet', weights) FROM files;
-- weights of another architecture
SELECT medtl.import_model('x', 'resnet18', weights) FROM files;
-- labels that do not match the head
SELECT medtl.import_model('x', 'mobilenet_v2', weights, labels => ARRAY['a', 'b']) FROM files;
-- not safetensors at all
SELECT medtl.import_model('x', 'mobilenet_v2', '\x0102030405'::bytea);
SELECT medtl.import_model('x', 'mobilenet_v2', '\xffffffffffffffff7b7d'::bytea);
-- truncated: header promises more data than there is
SELECT medtl.import_model('x', 'mobilenet_v2', substr(weights, 1, 100000)) FROM files;
-- small hand-made files: 8-byte little-endian header length, JSON, data
CREATE FUNCTION st_file(header text, data bytea) RETURNS bytea LANGUAGE sql AS $$
    SELECT (SELECT string_agg(set_byte('\x00'::bytea, 0,
                    (octet_length(convert_to(header, 'UTF8'))::bigint >> (8 * i))::int & 255), ''::bytea ORDER BY i)
              FROM generate_series(0, 7) i)
           || convert_to(header, 'UTF8') || data
$$;
-- header claims to be longer than the file
SELECT medtl.safetensors_info('\x10000000000000007b7d'::bytea);
-- a valid file whose tensor has the wrong shape for the architecture
SELECT medtl.import_model('x', 'mobilenet_v2',
    st_file('{"classifier.1.weight":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}}', decode(repeat('00', 24), 'hex')));
-- two tensors sharing bytes
SELECT medtl.safetensors_info(st_file('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}',
                                      decode(repeat('00', 8), 'hex')));
-- an unknown dtype, a shape that does not fit its bytes, offsets past the end
SELECT medtl.safetensors_info(st_file('{"a":{"dtype":"Q7","shape":[1],"data_offsets":[0,4]}}', '\x00000000'));
SELECT medtl.safetensors_info(st_file('{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,4]}}', '\x00000000'));
SELECT medtl.safetensors_info(st_file('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4096]}}', '\x00000000'));
-- broken JSON
SELECT medtl.safetensors_info(st_file('{"a":{"dtype":"F32","shape":[1],', '\x00000000'));
-- metadata and an empty file are fine
SELECT medtl.safetensors_info(st_file('{"__metadata__":{"arch":"resnet18"}}', ''));
-- a NaN among the weights: overwrite the first float of a tensor with 0x7fc00000
SELECT medtl.import_model('nan_model', 'mobilenet_v2',
       overlay(weights placing '\x0000c07f'::bytea
               from 9 + (get_byte(weights, 0) + 256 * get_byte(weights, 1) + 65536 * get_byte(weights, 2))
                    + 52 * 8)) FROM files;
-- nothing half-written by the failures
SELECT count(*) AS models, (SELECT count(*) FROM medtl.weights) AS tensors FROM medtl.models;
-- reading server files is for pg_read_server_files members; paths must be absolute
SELECT medtl.read_server_file('relative/path');
SELECT medtl.read_server_file('/nonexistent/file');
