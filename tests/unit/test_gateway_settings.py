"""Which reply partitions a gateway uses: fixed by its id, whatever the restarts."""

import pytest

from shared.env import SettingsError

from services.gateway.settings import home_partitions


def test_an_ordinal_id_takes_its_own_partition():
    assert home_partitions("sluice-gateway-3", 16, None) == (3,)
    assert home_partitions("gw-0", 16, None) == (0,)
    assert home_partitions("gw-17", 16, None) == (1,)


def test_any_other_id_hashes_to_a_stable_partition():
    first = home_partitions("edge-east", 16, None)
    assert first == home_partitions("edge-east", 16, None) and 0 <= first[0] < 16


def test_partitions_may_be_listed():
    assert home_partitions("x", 16, "5, 2,5") == (2, 5)


@pytest.mark.parametrize("listed", ["16", "a", "-1", ","])
def test_listed_partitions_must_exist(listed):
    with pytest.raises(SettingsError):
        home_partitions("x", 16, listed)
