"""thin_delta's report as the lvmthin provider reads it: both the plain and the --verbose form, as the real
tool printed them inside the test VM (two snapshots of one thin LV, 64 KiB chunks)."""

from __future__ import annotations

import pytest

from cbtbackup.engine.lvmthin.delta import parse_delta
from cbtbackup.engine.lvmthin.lvm import LvmError, dm_name, split_device
from cbtbackup.errors import UsageError

K64 = 64 << 10

VERBOSE = """<superblock uuid="" time="2" transaction="3" data_block_size="128" nr_data_blocks="0">
  <diff left="2" right="3">
    <same>
      <range begin="0" data_begin="0" length="80"/>
    </same>
    <left_only>
      <range begin="80" data_begin="80" length="16"/>
    </left_only>
    <same>
      <range begin="96" data_begin="96" length="4"/>
    </same>
    <different>
      <range begin="100" left_data_begin="100" right_data_begin="320" length="3"/>
    </different>
    <right_only>
      <range begin="1000" data_begin="323" length="1"/>
    </right_only>
  </diff>
</superblock>"""

PLAIN = """<superblock uuid="" time="2" transaction="3" data_block_size="128" nr_data_blocks="0">
  <diff left="2" right="3">
    <same begin="0" length="80"/>
    <left_only begin="80" length="16"/>
    <different begin="100" length="3"/>
    <right_only begin="1000" length="1"/>
  </diff>
</superblock>"""


@pytest.mark.parametrize("report", [VERBOSE, PLAIN], ids=["verbose", "plain"])
def test_changed_and_discarded_ranges_in_bytes(report: str) -> None:
    delta = parse_delta(report)
    assert delta.changed == [(100 * K64, 3 * K64), (1000 * K64, K64)]
    assert delta.discarded == [(80 * K64, 16 * K64)]


def test_a_report_without_a_block_size_is_refused() -> None:
    with pytest.raises(LvmError):
        parse_delta('<superblock uuid=""><diff left="1" right="2"/></superblock>')


def test_device_mapper_names_and_lv_paths() -> None:
    assert dm_name("vg-a", "thin-pool_tmeta") == "vg--a-thin--pool_tmeta"
    assert split_device("/dev/vg0/data") == ("vg0", "data")
    for bad in ("/dev/mapper/vg0-data", "/dev/loop3", "/srv/disk.img", "/dev/vg0/data/x"):
        with pytest.raises(UsageError):
            split_device(bad)
