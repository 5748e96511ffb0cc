"""Learned rules against the emulator's noisy mode: noise spares good rules, drift is caught."""

import random

import pytest

from scrapy_llm_extract.emulator.config import EmulatorConfig
from scrapy_llm_extract.emulator.extract import fill, structured_entries
from scrapy_llm_extract.emulator.noise import Noise, noise_of
from scrapy_llm_extract.rules import RuleBook
from scrapy_llm_extract.rules.values import canonical
from tests.test_rules import SCHEMA, URL, page

PAGES = 1500


def sale(n):
    """The page after the shop started sales: the price now stated is in a new meta tag."""
    return page(n).replace("<head>", f'<head><meta name="price" content="{5 + n % 80}.00">')


def model(html, noise):
    return noise.apply(fill(SCHEMA, structured_entries(html)), html)


def run(noise, render=page, drift_at=None, seed=3):
    """Crawl PAGES pages; return the rule book's counts and the wrong values it emitted."""
    rules = RuleBook(None, audit_start=0.5, audit_floor=0.05, rng=random.Random(seed))
    counts = {"answered": 0, "retired": 0, "wrong": 0, "caught_after": None}
    for n in range(PAGES):
        drifted = drift_at is not None and n >= drift_at
        html = render(n) if drifted else page(n)
        view = rules.view(html, URL.format(n=n))
        verdict = rules.answer(view, SCHEMA)
        truth = fill(SCHEMA, structured_entries(html))
        if verdict.fields is not None:
            counts["answered"] += 1
            counts["wrong"] += any(
                canonical(verdict.fields[k]) != canonical(truth[k]) for k in truth
            )
            continue
        learned = rules.learn(view, model(html, noise))
        counts["retired"] += learned.retired
        if drifted and learned.disagreements and counts["caught_after"] is None:
            counts["caught_after"] = n - drift_at
    return counts


def test_noise_is_seeded_per_page_and_reformatting_keeps_values():
    noise = Noise(rate=1.0, wrong_share=0.0, seed=1)
    answers = [model(page(n), noise) for n in range(50)]
    assert answers == [model(page(n), noise) for n in range(50)]
    clean = [model(page(n), Noise()) for n in range(50)]
    assert answers != clean
    for noisy, exact in zip(answers, clean, strict=True):
        assert {k: canonical(v) for k, v in noisy.items()} == {
            k: canonical(v) for k, v in exact.items()
        }


def test_noise_comes_from_the_emulator_config():
    config = EmulatorConfig.from_dict({"noise_rate": 0.2, "noise_wrong_share": 1.0, "seed": 9})
    noise = noise_of(config)
    wrong = sum(model(page(n), noise) != model(page(n), Noise()) for n in range(500))
    assert 50 < wrong < 150


@pytest.mark.parametrize("rate", [0.05, 0.2])
def test_a_noisy_model_does_not_retire_good_rules(rate):
    counts = run(Noise(rate=rate, wrong_share=0.5, seed=5))
    assert counts["answered"] > 0.85 * PAGES
    assert counts["retired"] <= 1
    assert counts["wrong"] == 0


def test_a_silent_drift_is_caught_by_the_audit():
    counts = run(Noise(rate=0.05, seed=5), render=sale, drift_at=PAGES // 2)
    assert counts["caught_after"] is not None and counts["caught_after"] < 100
    assert counts["retired"] >= 1
    assert counts["wrong"] < counts["caught_after"] + 1
