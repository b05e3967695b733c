"""Pairwise results as ratings: Bradley-Terry strengths with bootstrap intervals, and win rates with Wilson intervals
(the Chatbot Arena method, on games between models answering the same prompts).

    games = [("sft", "rl", 0.0), ("sft", "base", 1.0), ("rl", "base", 0.5), ...]   # (a, b, score of a: 1, 0.5, 0)
    theta = fit(games, players)                       # log-odds strengths, mean 0: P(a beats b) = sigmoid(ta - tb)
    low, high = bootstrap(games, players, rounds=200, seed=0)
    elo(theta)                                        # the same on the Elo scale: 1000 + 400 log10(e) * theta

A tie counts as half a win for each side (the usual Bradley-Terry treatment of ties). A small L2 penalty keeps the
strengths finite when a player wins or loses every game and fixes the model's free offset.
"""
from __future__ import annotations

import math

import numpy as np

L2 = 1e-3  # per player: negligible against a few games' log-likelihood, enough to keep an unbeaten player finite


def fit(games: list[tuple[str, str, float]], players: list[str], iters: int = 50) -> np.ndarray:
    """Maximum-likelihood strengths [players] (log-odds, mean 0) by Newton's method on the logistic likelihood."""
    index = {p: i for i, p in enumerate(players)}
    a = np.array([index[g[0]] for g in games], dtype=np.int64)
    b = np.array([index[g[1]] for g in games], dtype=np.int64)
    y = np.array([g[2] for g in games], dtype=np.float64)  # [G] score of a
    theta = np.zeros(len(players))
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(theta[a] - theta[b])))  # [G] P(a beats b)
        r = y - p
        grad = np.bincount(a, r, len(players)) - np.bincount(b, r, len(players)) - L2 * theta
        w = p * (1.0 - p)
        hess = np.diag(np.bincount(a, w, len(players)) + np.bincount(b, w, len(players)) + L2)
        np.add.at(hess, (a, b), -w)
        np.add.at(hess, (b, a), -w)
        step = np.linalg.solve(hess, grad)
        theta += step
        if np.abs(step).max() < 1e-10:
            break
    return theta - theta.mean()


def bootstrap(games: list[tuple[str, str, float]], players: list[str], rounds: int = 200, seed: int = 0,
              level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) [players]: percentile interval of the strengths over `rounds` resamplings of the games."""
    rng = np.random.default_rng(seed)
    fits = np.stack([fit([games[i] for i in rng.integers(0, len(games), len(games))], players)
                     for _ in range(rounds)])
    tail = (1.0 - level) / 2 * 100
    return np.percentile(fits, tail, axis=0), np.percentile(fits, 100 - tail, axis=0)


def elo(theta: np.ndarray) -> np.ndarray:
    """Log-odds strengths on the Elo scale (400 points = 10:1 odds), centred on 1000."""
    return 1000.0 + 400.0 / math.log(10.0) * theta


def wilson(score: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a win rate `score` (ties as halves) over n games."""
    if n == 0:
        return 0.0, 1.0
    centre = (score + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(score * (1 - score) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)
