"""PII scrubbing: each kind found in prose, nothing found in the numbers and slices of source code."""

from __future__ import annotations

import dataclasses

import pytest

from llmlab.curate.config import PiiConfig
from llmlab.curate.pii import PLACEHOLDERS, is_card_number, is_public_ip, luhn_valid, scrub_pii

CFG = PiiConfig()


def scrub(text: str, **overrides) -> tuple[str, dict[str, int]]:
    return scrub_pii(text, dataclasses.replace(CFG, **overrides))


def test_placeholders_are_the_documented_ones():
    assert PLACEHOLDERS == {
        "email": "<EMAIL>", "phone": "<PHONE>", "ip": "<IP_ADDRESS>", "credit_card": "<CREDIT_CARD>"
    }  # fmt: skip


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Write to john.doe+news@example.co.uk today.", "Write to <EMAIL> today."),
        ("<guido@python.org>", "<<EMAIL>>"),
        ("mailto:info@egenix.com.", "mailto:<EMAIL>."),
        ("a@b.com and c_d@e-f.org", "<EMAIL> and <EMAIL>"),
    ],
)
def test_email_addresses_are_replaced(text, expected):
    assert scrub(text)[0] == expected


@pytest.mark.parametrize(
    "text",
    ["@property\ndef x(self):", "y = a@b.T", "x = w @ v", "user@localhost", "name@", "@example.com", "a.@b"],
)
def test_decorators_matrix_products_and_hostless_names_are_not_emails(text):
    assert scrub(text) == (text, {})


@pytest.mark.parametrize(
    "phone",
    [
        "(555) 123-4567", "555-123-4567", "555.123.4567", "555 123 4567", "1-800-555-1234", "+1 (555) 123-4567",
        "+1-555-123-4567", "+44 20 7946 0958", "+33 1 23 45 67 89", "+49 30 12345678", "020 7946 0958",
        "(0211) 268 4563", "01 23 45 67 89",
    ],
)  # fmt: skip
def test_phone_numbers_are_replaced(phone):
    assert scrub(f"Call me at {phone}, please.") == ("Call me at <PHONE>, please.", {"phone": 1})


def test_a_compact_international_number_is_a_phone_only_in_a_tel_uri():
    assert scrub("tel:+14155552671")[0] == "tel:<PHONE>"
    assert scrub("a = +4294967296  # 1 << 32")[1] == {}


@pytest.mark.parametrize(
    "text",
    [
        "x = 0x7fff + 1234567", "n = 12345678901", "in 1999 and 2024", "on 2024-01-15 at 12:30:45",
        "01-13-1980", "01-02-03-04", "version 3.11.7", "ISBN 978-3-16-148410-0", "SSN 123-45-6789",
        "123-456-7890", "6 12 24 48 96 192 384 768 1536 3072", "211 486 761 1265 fr.comp.lang.python",
        "+1 2", "555-1234", "x = y+555-123-4567",
    ],
)  # fmt: skip
def test_code_numbers_dates_and_versions_are_not_phones(text):
    assert scrub(text) == (text, {})


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.4.40", "2a00:1450:4001:81c::200e", "::ffff:93.184.216.34"])
def test_public_ip_addresses_are_replaced(address):
    assert scrub(f"host {address}.") == ("host <IP_ADDRESS>.", {"ip": 1})


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1", "192.168.0.1", "10.0.0.1", "172.16.5.4", "169.254.1.1", "0.0.0.0", "255.255.255.255",
        "100.64.0.1", "224.0.0.251", "192.0.2.10", "::1", "::", "fe80::1", "fec0::1", "fd00::1", "2001:db8::1",
        "::ffff:192.168.0.1",
    ],
)  # fmt: skip
def test_private_loopback_reserved_and_documentation_addresses_are_kept(address):
    text = f"bind('{address}', 8080)"
    assert scrub(text) == (text, {})


@pytest.mark.parametrize(
    "text",
    [
        "x[1::2] + y[::2] + z[a::b]", "1.2.3.4.5", "999.1.1.1", "01.02.03.04", "__version__ = '1.2.3.4'",
        "v93.184.216.34", "93.184.216.34.in-addr.arpa", "00:1a:2b:3c:4d:5e", "12:34:56", "section-7.1.1.1",
    ],
)  # fmt: skip
def test_slices_versions_macs_and_times_are_not_ips(text):
    assert scrub(text) == (text, {})


def test_luhn_checksum():
    assert luhn_valid("4111111111111111") and luhn_valid("79927398713")
    assert not luhn_valid("4111111111111112") and not luhn_valid("79927398710")


@pytest.mark.parametrize(
    "card",
    [
        "4111111111111111", "4111 1111 1111 1111", "4111-1111-1111-1111", "5555555555554444", "378282246310005",
        "3782 822463 10005", "6011111111111117", "30569309025904", "4222222222222",
    ],
)  # fmt: skip
def test_card_numbers_passing_luhn_are_replaced(card):
    assert scrub(f"card: {card}.") == ("card: <CREDIT_CARD>.", {"credit_card": 1})


@pytest.mark.parametrize(
    "text",
    [
        "4111111111111112", "4111 1111 1111 1112", "4111 1111-1111 1111", "4111111111111111111111",
        "x = 0x4111111111111111", "1.4111111111111111", "20100914001155", "5749986484189612790",
    ],
)  # fmt: skip
def test_failing_luhn_mixed_separators_longer_runs_and_non_issuers_are_kept(text):
    assert scrub(text) == (text, {})


def test_issuer_table_and_checksum_both_decide():
    assert is_card_number("4111111111111111")
    assert luhn_valid("20100914001155") and not is_card_number("20100914001155")  # a timestamp: no issuer


def test_is_public_ip_rejects_garbage():
    assert not is_public_ip("1:2:3") and not is_public_ip("300.1.1.1") and is_public_ip("93.184.216.34")


def test_counts_by_kind_and_disabled_kinds():
    text = "a@b.com c@d.org 555-123-4567 8.8.4.40 4111111111111111 192.168.0.1"
    scrubbed, counts = scrub(text)
    assert scrubbed == "<EMAIL> <EMAIL> <PHONE> <IP_ADDRESS> <CREDIT_CARD> 192.168.0.1"
    assert counts == {"email": 2, "phone": 1, "ip": 1, "credit_card": 1}
    assert scrub(text, email=False, ip=False) == (
        "a@b.com c@d.org <PHONE> 8.8.4.40 <CREDIT_CARD> 192.168.0.1",
        {"phone": 1, "credit_card": 1},
    )
    assert scrub(text, enabled=False) == (text, {})
    assert scrub("nothing here") == ("nothing here", {})


def test_an_ip_inside_an_email_counts_once_as_an_email():
    assert scrub("admin@93.184.216.34.example.com") == ("<EMAIL>", {"email": 1})


def test_chained_at_signs_give_one_address_not_overlapping_ones():
    assert scrub("x a@b.com@c.org y") == ("x <EMAIL>@c.org y", {"email": 1})
