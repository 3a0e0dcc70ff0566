-- zoo_cnn: densenet121 and efficientnet_b0 created from scratch, scored, and
-- trained with stage freezing (their forward and training parity with
-- PyTorch is checked by test/parity_torch.py and test/parity_train.py)
SET search_path = public, medtl;
SET client_min_messages = warning;

-- from scratch at 64x64 (small, to stay fast): torchvision's tensors, a two-class head
SELECT create_model('dn', 'densenet121', ARRAY['normal', 'pneumonia'], pretrained => false,
                    input_size => 64) > 0 AS created;
SELECT create_model('ef', 'efficientnet_b0', ARRAY['normal', 'pneumonia'], pretrained => false,
                    input_size => 64) > 0 AS created;
SELECT m.name, m.arch, m.num_classes, count(*) AS tensors
  FROM models m JOIN weights w USING (model_id) WHERE m.name IN ('dn', 'ef')
 GROUP BY m.name, m.arch, m.num_classes ORDER BY m.name;
SELECT m.name, w.tensor, w.shape FROM models m JOIN weights w USING (model_id)
 WHERE (m.name = 'dn' AND w.tensor IN ('classifier.weight', 'classifier.bias',
                                       'features.denseblock4.denselayer16.conv2.weight',
                                       'features.transition3.conv.weight'))
    OR (m.name = 'ef' AND w.tensor IN ('classifier.1.weight', 'features.5.0.block.2.fc1.weight',
                                       'features.5.0.block.2.fc2.bias', 'features.8.0.weight'))
 ORDER BY m.name, w.tensor;
-- torchvision's head initialisation: zero bias for both
SELECT m.name, w.tensor, w.data = decode(repeat('00', 8), 'hex') AS zero
  FROM models m JOIN weights w USING (model_id)
 WHERE m.name IN ('dn', 'ef') AND w.tensor LIKE 'classifier%bias' ORDER BY m.name;

-- scoring: a label, two probabilities summing to 1, the pooled features
SELECT DISTINCT predict('dn', image) IN ('normal', 'pneumonia') AS dn_label,
       predict('ef', image) IN ('normal', 'pneumonia') AS ef_label
  FROM xrays;
SELECT round((SELECT sum(p) FROM unnest(predict_proba('dn', image)) p)::numeric, 4) AS dn_sum,
       round((SELECT sum(p) FROM unnest(predict_proba('ef', image)) p)::numeric, 4) AS ef_sum,
       cardinality(embed('dn', image)) AS dn_embed, cardinality(embed('ef', image)) AS ef_embed
  FROM xrays WHERE id = 1;

-- training frozen up to a stage: what is frozen stays, what follows moves (batch
-- statistics: from scratch, EfficientNet's activations fade through identity BNs)
CREATE TABLE zoo_before AS
SELECT m.name, w.tensor, w.data FROM models m JOIN weights w USING (model_id)
 WHERE m.name IN ('dn', 'ef');
\set VERBOSITY terse
SELECT train('dn', 'xrays', epochs => 1, batch_size => 4, freeze => 'features.denseblock3',
             validation => 0.25, optimizer => 'sgd', lr => 0.01, batch_norm => 'train') > 0 AS trained;
SELECT train('ef', 'xrays', epochs => 1, batch_size => 4, freeze => 'features.5',
             validation => 0.25, optimizer => 'sgd', lr => 0.01, batch_norm => 'train') > 0 AS trained;
\set VERBOSITY default
SELECT m.name, r.status FROM runs r JOIN models m USING (model_id)
 WHERE m.name IN ('dn', 'ef') ORDER BY m.name;
SELECT b.name, b.tensor, w.data = b.data AS unchanged
  FROM zoo_before b JOIN models m ON m.name = b.name JOIN weights w ON w.model_id = m.model_id AND w.tensor = b.tensor
 WHERE b.tensor IN ('features.denseblock3.denselayer24.conv2.weight', 'features.transition3.conv.weight',
                    'features.denseblock4.denselayer1.conv1.weight', 'classifier.weight',
                    'features.5.2.block.3.0.weight', 'features.6.0.block.0.0.weight',
                    'features.6.0.block.2.fc1.weight', 'classifier.1.weight')
 ORDER BY b.name, b.tensor;

-- a stage the architecture does not have
SELECT train('dn', 'xrays', epochs => 1, freeze => 'layer3');
SELECT train('ef', 'xrays', epochs => 1, freeze => 'features.denseblock3');
