"""edufilter classifier: educational-value models trained on 0-5 LLM labels.

    from classifier.scorer import Scorer
    scorer = Scorer.load(MODEL_DIR)           # verifies model.json and the weight hashes
    s = scorer.score(texts)                   # s.score (float32 0-5), s.int_score, s.keep
    scorer.explain(text, top_k=10)            # [(term, contribution), ...]

Modules: `text` (the one normalisation), `labels` (label files and their checks), `backends`
(fastText, TF-IDF, sentence-embedding + scikit-learn head), `train` (cross-validated
hyperparameters, calibration, artefact), `artefact` (model.json, version = hash of the weights),
`scorer`, `evaluate` (metrics, tables, plots), `cli` (`edufilter train`, `edufilter evaluate`).
"""
