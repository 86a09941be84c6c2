"""Plain NumPy references of the metrics: obvious code, no cleverness, no kernels."""

import numpy as np


def softmax(z):
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def equal_width_edges(n_bins):
    return np.array([m / n_bins for m in range(n_bins + 1)])


def quantile_edges(values, n_bins, weights=None):
    q = np.linspace(0, 1, n_bins + 1)
    if weights is None:
        return np.quantile(values, q)
    return np.quantile(values, q, weights=weights, method="inverted_cdf")


def bin_index(values, edges):
    """Bin m holds (e_{m-1}, e_m]; values at or below e_1 go to the first bin."""
    n_bins = len(edges) - 1
    out = np.zeros(len(values), dtype=np.int64)
    for i, v in enumerate(values):
        m = 0
        while m < n_bins - 1 and v > edges[m + 1]:
            m += 1
        out[i] = m
    return out


def binned(confidence, target, edges, weights=None):
    """Per-bin (weight, mean confidence, mean target) with Python loops."""
    n_bins = len(edges) - 1
    w = np.ones(len(confidence)) if weights is None else np.asarray(weights, dtype=np.float64)
    idx = bin_index(confidence, edges)
    weight = np.zeros(n_bins)
    sc = np.zeros(n_bins)
    st = np.zeros(n_bins)
    count = np.zeros(n_bins, dtype=np.int64)
    for i in range(len(confidence)):
        count[idx[i]] += 1
        weight[idx[i]] += w[i]
        sc[idx[i]] += w[i] * confidence[i]
        st[idx[i]] += w[i] * target[i]
    return count, weight, sc, st


def errors(weight, sc, st):
    filled = weight > 0
    gap = np.abs(st[filled] / weight[filled] - sc[filled] / weight[filled])
    frac = weight[filled] / weight.sum()
    return {"l1": np.sum(frac * gap), "l2": np.sqrt(np.sum(frac * gap**2)), "max": gap.max()}


def top_label(probs):
    probs = np.asarray(probs, dtype=np.float64)
    return probs.max(axis=1), probs.argmax(axis=1)


def calibration_error(scores, labels, n_bins=15, strategy="uniform", norm="l1", from_logits=False,
                      sample_weight=None):
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.ndim == 1:
        conf = 1 / (1 + np.exp(-scores)) if from_logits else scores
        target = labels.astype(np.float64)
    else:
        probs = softmax(scores) if from_logits else scores
        conf, pred = top_label(probs)
        target = (pred == labels).astype(np.float64)
    edges = equal_width_edges(n_bins) if strategy == "uniform" else quantile_edges(conf, n_bins, sample_weight)
    _, weight, sc, st = binned(conf, target, edges, sample_weight)
    return errors(weight, sc, st)[norm]


def classwise_calibration_error(scores, labels, n_bins=15, norm="l1", from_logits=False, sample_weight=None):
    scores = np.asarray(scores, dtype=np.float64)
    probs = softmax(scores) if from_logits else scores
    edges = equal_width_edges(n_bins)
    per_class = []
    for k in range(probs.shape[1]):
        _, weight, sc, st = binned(probs[:, k], (labels == k).astype(np.float64), edges, sample_weight)
        per_class.append(errors(weight, sc, st)[norm])
    return np.mean(per_class)


def brier_score(scores, labels, from_logits=False, sample_weight=None):
    scores = np.asarray(scores, dtype=np.float64)
    w = np.ones(len(labels)) if sample_weight is None else np.asarray(sample_weight, np.float64)
    if scores.ndim == 1:
        p = 1 / (1 + np.exp(-scores)) if from_logits else scores
        return np.sum(w * (p - labels) ** 2) / w.sum()
    probs = softmax(scores) if from_logits else scores
    onehot = np.eye(probs.shape[1])[labels]
    return np.sum(w * ((probs - onehot) ** 2).sum(axis=1)) / w.sum()


def nll(scores, labels, from_logits=False, sample_weight=None, eps=None):
    scores_in = np.asarray(scores)
    scores = scores_in.astype(np.float64)
    eps = np.finfo(scores_in.dtype if scores_in.dtype.kind == "f" else np.float64).eps if eps is None else eps
    w = np.ones(len(labels)) if sample_weight is None else np.asarray(sample_weight, np.float64)
    n = len(labels)
    if scores.ndim == 1:
        p = 1 / (1 + np.exp(-scores)) if from_logits else np.clip(scores, eps, 1 - eps)
        ll = np.where(labels == 1, np.log(p), np.log1p(-p))
        return -np.sum(w * ll) / w.sum()
    if from_logits:
        z = scores - scores.max(axis=1, keepdims=True)
        logp = z[np.arange(n), labels] - np.log(np.exp(z).sum(axis=1))
    else:
        logp = np.log(np.maximum(scores[np.arange(n), labels], eps))
    return -np.sum(w * logp) / w.sum()
