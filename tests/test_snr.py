"""train.snr measures a real call's SNR the way the sampler sets a synthetic one's."""

from pathlib import Path

import numpy as np
import pytest

from train import synth
from train.data import Recording
from train.snr import call_snr_db, summary


@pytest.mark.parametrize("snr_db", [-9.0, -3.0, 3.0])
def test_calls_mixed_at_a_known_snr_measure_that_snr(snr_db):
    """Over 20 calls (one call's figure is noisy: its span holds 1-3 thousand noise samples)."""
    rng = np.random.default_rng(1)
    audio = rng.standard_normal(100 * synth.SR)
    spans = []
    for k in range(20):
        call = synth.upcall(rng)
        offset = (2 + 5 * k) * synth.SR
        audio = synth.mix_at_snr(call, audio, snr_db, offset)
        spans.append((offset / synth.SR, (offset + len(call)) / synth.SR))
    values = call_snr_db(Recording(Path("x.wav"), audio, spans))
    assert None not in values
    assert float(np.median(values)) == pytest.approx(snr_db, abs=1.0)


def test_a_call_no_louder_than_its_context_is_not_given_a_number():
    audio = np.random.default_rng(2).standard_normal(20 * synth.SR)
    rec = Recording(Path("noise.wav"), audio, [(8.0, 9.0), (12.0, 13.0), (15.0, 16.0)])
    values = call_snr_db(rec)
    assert None in values  # pure noise: some spans come out quieter than around them
    assert "no louder than their context" in summary([rec])
