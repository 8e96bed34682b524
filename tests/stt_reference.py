"""Plain NumPy reference of the STT block: loops, float64, no tricks.

Every line follows docs/method.md so it can be checked by eye. Tests feed it
the Keras layer's own weights and compare outputs.
"""

import numpy as np


def key_window_radii(num_key_frames, start_size=1, end_size=5, expansion=1):
    radii = []
    for t in range(1, num_key_frames + 1):  # t = 1 is K_1, the farthest frame
        l_t = start_size + (num_key_frames - t) * expansion
        radii.append(l_t if l_t < end_size else end_size)
    return radii


def softmax(s):
    e = np.exp(s - np.max(s))
    return e / e.sum()


def nsm_score(features, radius, temperature=None):
    """[B, h, w, d] -> [B, h, w]; neighbours outside the map are excluded.

    temperature tau: the dot products are cosine similarities / tau.
    """
    b_size, h, w, _ = features.shape
    if temperature is not None:
        norms = np.maximum(np.linalg.norm(features, axis=-1, keepdims=True), 1e-12)
        features = features / norms / np.sqrt(temperature)
    out = np.zeros((b_size, h, w))
    for b in range(b_size):
        for u in range(h):
            for v in range(w):
                q = features[b, u, v]
                neighbours = [
                    features[b, y, x]
                    for y in range(u - radius, u + radius + 1)
                    for x in range(v - radius, v + radius + 1)
                    if 0 <= y < h and 0 <= x < w
                ]
                n_b = len(neighbours)
                s = np.array([np.dot(n, q) for n in neighbours])
                p_sim = softmax(s)
                d_kl = sum((1.0 / n_b) * np.log((1.0 / n_b) / p) for p in p_sim)
                d_cos = np.mean(
                    [1.0 - np.dot(n, q) / max(np.linalg.norm(n) * np.linalg.norm(q), 1e-12) for n in neighbours]
                )
                out[b, u, v] = d_kl + d_cos
    return out


def num_selected(top_ratio, num_points):
    if top_ratio <= 0:
        return 0
    return min(num_points, max(1, int(np.floor(top_ratio * num_points + 0.5))))


def select_queries(scores, top_ratio):
    """[B, h, w] -> [B, N_q] flat indices of the highest scores, ties to the lower index."""
    b_size, h, w = scores.shape
    n_q = num_selected(top_ratio, h * w)
    return np.stack([np.argsort(-scores[b].reshape(-1), kind="stable")[:n_q] for b in range(b_size)])


def layer_norm(x, gamma, beta, epsilon):
    return (x - x.mean()) / np.sqrt(x.var() + epsilon) * gamma + beta


def stt_block(query, keys, weights, *, num_key_frames, start_size=1, end_size=5, expansion=1,
              neighborhood_radius=5, top_ratio=0.5, num_heads=8, key_selection="window", epsilon=1e-5,
              nsm_temperature=None, norm_first=False, change_weight=0.0, residual_gate=False):
    """docs/method.md's equations, point by point: W^Q/W^K/W^V reduce to d_r inside attention,
    W^O maps back to d, residual + LayerNorms + FFN at full width d. With `residual_gate` (pre-norm
    only) the attention and FFN branches are multiplied channel-wise by W["gates_attention"] and
    W["gates_ffn"] before they are added."""
    W = weights
    b_size, h, w, d = query.shape
    d_r = W["query_kernel"].shape[1]
    d_head = d_r // num_heads
    radii = key_window_radii(num_key_frames, start_size, end_size, expansion)
    out = query.copy()
    if num_selected(top_ratio, h * w) == 0:
        return out
    scores = nsm_score(query, neighborhood_radius, nsm_temperature)
    if change_weight > 0:  # z(NSM) + w * z(1 - cos(k_t, k_{t-1})) per map
        for b in range(b_size):
            current = query[b] @ W["key_kernel"] + W["key_bias"]
            previous = keys[b, -1] @ W["key_kernel"] + W["key_bias"]
            cos = (current * previous).sum(-1) / np.maximum(
                np.linalg.norm(current, axis=-1) * np.linalg.norm(previous, axis=-1), 1e-12)
            change = 1.0 - cos

            def z(x):
                return (x - x.mean()) / max(x.std(), 1e-6)

            scores[b] = z(scores[b]) + change_weight * z(change)
    selected = select_queries(scores, top_ratio)

    gate_attention, gate_ffn = (W["gates_attention"], W["gates_ffn"]) if residual_gate else (1.0, 1.0)

    def ffn(x):
        return np.maximum(0.0, x @ W["ffn1_kernel"] + W["ffn1_bias"]) @ W["ffn2_kernel"] + W["ffn2_bias"]

    for b in range(b_size):
        for p in selected[b]:
            u, v = divmod(int(p), w)
            q0 = query[b, u, v]
            key_points = []  # (frame, y, x)
            for t in range(num_key_frames):
                if key_selection == "all":
                    key_points += [(t, y, x) for y in range(h) for x in range(w)]
                else:
                    l_t = radii[t]
                    key_points += [
                        (t, y, x)
                        for y in range(u - l_t, u + l_t + 1)
                        for x in range(v - l_t, v + l_t + 1)
                        if 0 <= y < h and 0 <= x < w
                    ]
            q_in = layer_norm(q0, W["norm1_gamma"], W["norm1_beta"], epsilon) if norm_first else q0
            qp = q_in @ W["query_kernel"] + W["query_bias"]
            kp = [keys[b, t, y, x] @ W["key_kernel"] + W["key_bias"] for t, y, x in key_points]
            vp = [keys[b, t, y, x] @ W["value_kernel"] + W["value_bias"] for t, y, x in key_points]
            heads = []
            for j in range(num_heads):
                sl = slice(j * d_head, (j + 1) * d_head)
                logits = np.array([np.dot(qp[sl], k[sl]) / np.sqrt(d_head) for k in kp])
                a = softmax(logits)
                heads.append(sum(a_i * v_i[sl] for a_i, v_i in zip(a, vp)))
            mh = np.concatenate(heads) @ W["output_kernel"] + W["output_bias"]  # back to d
            if norm_first:
                x = q0 + gate_attention * mh
                out[b, u, v] = x + gate_ffn * ffn(layer_norm(x, W["norm2_gamma"], W["norm2_beta"], epsilon))
            else:
                x = layer_norm(q0 + mh, W["norm1_gamma"], W["norm1_beta"], epsilon)
                out[b, u, v] = layer_norm(x + ffn(x), W["norm2_gamma"], W["norm2_beta"], epsilon)
    return out
