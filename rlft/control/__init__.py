"""Classic control on gymnasium: the same `rlft.algos` functions that train language models, on small MLPs."""
