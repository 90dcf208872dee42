"""Slurm hostlists: ranges, zero padding, several bracket groups, commas and dashes, bad input."""

from __future__ import annotations

import pytest

from numpy_cnn.launch.hostlist import MAX_HOSTS, expand, first


@pytest.mark.parametrize(
    "hostlist, hosts",
    [
        ("node1", ["node1"]),
        ("login-a", ["login-a"]),
        ("login-a,login-b", ["login-a", "login-b"]),
        ("node[1-3]", ["node1", "node2", "node3"]),
        ("node[01-04,07]", ["node01", "node02", "node03", "node04", "node07"]),
        ("gpu-[1-3]", ["gpu-1", "gpu-2", "gpu-3"]),
        ("node[08-10]", ["node08", "node09", "node10"]),  # width of the low bound, kept past 09
        ("node[8-10]", ["node8", "node9", "node10"]),
        ("n[007]", ["n007"]),
        ("node[1,3],login-a,gpu[2-3]", ["node1", "node3", "login-a", "gpu2", "gpu3"]),
        ("node[1-2]-ib", ["node1-ib", "node2-ib"]),
        (
            "rack[1-2]-node[01-02]",
            ["rack1-node01", "rack1-node02", "rack2-node01", "rack2-node02"],  # first group slowest
        ),
        ("a[1-2]b[3,5]c[0]", ["a1b3c0", "a1b5c0", "a2b3c0", "a2b5c0"]),
        ("[1-2]", ["1", "2"]),
        (" node[1-2] ", ["node1", "node2"]),
        ("compute-0-[0,9]", ["compute-0-0", "compute-0-9"]),
        ("node[5-5]", ["node5"]),
    ],
)
def test_expand(hostlist: str, hosts: list[str]) -> None:
    assert expand(hostlist) == hosts
    assert first(hostlist) == hosts[0]


def test_a_long_range_counts_every_host() -> None:
    hosts = expand("n[0000-1023],x")
    assert len(hosts) == 1025 and hosts[0] == "n0000" and hosts[1023] == "n1023" and hosts[-1] == "x"


@pytest.mark.parametrize(
    "hostlist, words",
    [
        ("node[1-3", ["'[' without ']'", "node[1-3"]),
        ("node1-3]", ["']' without '['", "node1-3]"]),
        ("node[[1-3]]", ["nested '['", "node[[1-3]]"]),
        ("node[5-3]", ["reversed range '5-3'", "node[5-3]"]),
        ("node[a-c]", ["'a-c' is not a number", "node[a-c]"]),
        ("node[1-x]", ["'1-x'", "node[1-x]"]),
        ("node[1--3]", ["'1--3'"]),
        ("node[-3]", ["'-3'"]),
        ("node[]", ["empty range", "node[]"]),
        ("node[1,,2]", ["empty range", "node[1,,2]"]),
        ("node[1,]", ["empty range"]),
        ("a,,b", ["empty host name", "'a,,b'"]),
        ("a,", ["empty host name", "'a,'"]),
        (",a", ["empty host name"]),
        ("", ["empty hostlist"]),
        ("   ", ["empty hostlist"]),
        ("node 1", ["space inside host name 'node 1'"]),
        (f"n[0-{MAX_HOSTS}]", [f"more than {MAX_HOSTS} hosts", f"0-{MAX_HOSTS}"]),
        ("a[0-999]b[0-999]", [f"more than {MAX_HOSTS} hosts", "a[0-999]b[0-999]"]),
        ("n[१-३]", ["'१-३' is not a number"]),  # Devanagari digits pass str.isdigit, not [0-9]
    ],
)
def test_malformed_hostlists_name_the_bad_text(hostlist: str, words: list[str]) -> None:
    with pytest.raises(ValueError) as e:
        expand(hostlist)
    for word in words:
        assert word in str(e.value)
