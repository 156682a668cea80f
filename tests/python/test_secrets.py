"""Credentials never land: not in any file under the data dir, not in any decoded value, not in
what the collector printed (at debug level).

Both file checks are needed. The raw-byte search covers every file, footers, statistics and
unfinished files included; but pages are zstd-compressed and string statistics truncated, and a
collector with redaction switched off was seen to pass it. The decoded-value search catches that.
"""

from __future__ import annotations

import pytest

from corpus import SECRETS


@pytest.mark.parametrize("secret", SECRETS)
def test_secret_is_in_no_file_under_the_data_dir(ingested, secret):
    files = ingested.output.files()
    assert files, "no output to search"
    for f in files:
        assert secret.encode() not in f.read_bytes(), f"{secret} found in {f}"


@pytest.mark.parametrize("secret", SECRETS)
def test_secret_is_in_no_decoded_value(ingested, rows, secret):
    for r in rows:
        for col, v in r.items():
            values = v if isinstance(v, list) else [v]
            assert not any(isinstance(x, str) and secret in x for x in values), (col, r["record_id"])


def test_redaction_keeps_the_parameter_name(ingested, rows):
    by_key = ingested.by_key(rows)
    assert [r["path"] for r in by_key["req-s1"]] == ["/oauth/callback?code=REDACTED&state=ok"]
    assert [r["path"] for r in by_key["req-s2"]] == ["/api/orders?page=2&access_token=REDACTED"]


@pytest.mark.parametrize("secret", SECRETS)
def test_secret_is_not_in_the_collectors_output(ingested, secret):
    out = ingested.collector.output_bytes()
    assert out, "the collector printed nothing at all: are logs captured?"
    assert secret.encode() not in out
