import math

import pytest

from detector.numbers import is_finite_number, number


@pytest.mark.parametrize("value", [True, False, "1", None, math.nan, math.inf, -math.inf])
def test_bools_strings_nan_and_inf_are_not_numbers(value):
    assert not is_finite_number(value)
    with pytest.raises(ValueError):
        number(value)


def test_kind_and_bounds():
    assert number(3, int, 0) == 3 and isinstance(number(3), float)
    with pytest.raises(ValueError, match="integer"):
        number(2.5, int)
    with pytest.raises(ValueError, match="> 0"):
        number(0, float, 0, lo_open=True)
    with pytest.raises(ValueError, match="<= 1"):
        number(1.5, float, 0, 1)
