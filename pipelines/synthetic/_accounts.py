"""One batch's account holders: the accounts table, and what the other tables need to know about each
holder (activity, ID number, home network, a friend and a contact to send parcels to).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.synthetic._arrays import _ascii, _digits, _draw, _join, _pick, _strings, _taken, _text
from pipelines.synthetic._devices import _random_ip24
from pipelines.synthetic._people import _People, _people
from pipelines.synthetic._run import _Run
from pipelines.synthetic._times import _ACCOUNTS_FROM, _DAY, _timestamps
from pipelines.synthetic._vocabulary import _vocabulary
from profiling.identifiers import id_card_check_chars

_ACTIVITY_SIGMA = 1.2             # lognormal spread of account activity (heavy tail of orders)
_CONTACT_POOL_SHARE = 0.5         # people without an account, per account in the batch
_SIGNUP_SKEW = 0.85               # created = start + span * u ** skew: more sign-ups lately
_MEAN_TENURE = 1 - 1 / (1 + _SIGNUP_SKEW)  # mean of (until - created) / span under that skew


@dataclass(frozen=True)
class _Holders:
    """The batch's account holders (one row each) and what later stages need about them."""

    people: _People
    account_id: pa.Array
    created: np.ndarray       # microseconds
    activity: np.ndarray      # mean 1, heavy-tailed
    id_card: pa.Array         # resident ID number (used only on cross-border waybills)
    ip24: np.ndarray          # home network a.b.c
    friend: np.ndarray        # another holder of the batch they send parcels to
    contact: np.ndarray       # a person without an account they send parcels to (index into the pool)
    pay_with: np.ndarray      # preferred payment institution


def _id_cards(rng: np.random.Generator, region_chars: np.ndarray, birth_day: np.ndarray,
              female: np.ndarray) -> pa.Array:
    """GB 11643 resident ID numbers: region, birth date YYYYMMDD, sequence (odd for men), check character."""
    n = len(birth_day)
    day = birth_day.astype("datetime64[D]")
    year = day.astype("datetime64[Y]").astype(np.int64) + 1970
    month = day.astype("datetime64[M]").astype(np.int64) % 12 + 1
    day_of_month = (day - day.astype("datetime64[M]")).astype(np.int64) + 1
    sequence = rng.integers(0, 500, n) * 2 + np.where(female, 0, 1)
    body = np.hstack([region_chars, _digits(year * 10_000 + month * 100 + day_of_month, 8), _digits(sequence, 3)])
    return _text(np.hstack([body, id_card_check_chars(body - ord("0"))[:, None]]))


def _nicknames(rng: np.random.Generator, people: _People, birth_year: np.ndarray) -> pa.Array:
    vocabulary = _vocabulary()
    n = len(birth_year)
    handle_digits = pc.choose(
        pa.array(_draw(rng, n, [4, 4, 2]).astype(np.int8)),
        pa.array(birth_year).cast(pa.string()),
        pa.array(rng.integers(1, 1000, n)).cast(pa.string()),
        pa.array([""] * n, type=pa.string()),
    )
    styles = [
        people.name,
        _join(_pick(vocabulary.nick_adjective, rng.integers(0, len(vocabulary.nick_adjective), n)),
              _pick(vocabulary.nick_noun, rng.integers(0, len(vocabulary.nick_noun), n))),
        _join(people.name_pinyin, handle_digits),
        _join("用户", pa.array(rng.integers(10_000_000, 100_000_000, n)).cast(pa.string())),
    ]
    return pc.choose(pa.array(_draw(rng, n, [30, 20, 35, 15]).astype(np.int8)), *styles)


def _emails(rng: np.random.Generator, people: _People, birth_year: np.ndarray) -> pa.Array:
    vocabulary = _vocabulary()
    n = len(birth_year)
    domain = _draw(rng, n, vocabulary.email_weight)
    qq_number = pa.array(rng.integers(100_000, 4_000_000_000, n)).cast(pa.string())
    suffix = pc.if_else(pa.array(rng.random(n) < 0.5), pa.array(birth_year % 100).cast(pa.string()),
                        pa.array(rng.integers(1, 1000, n)).cast(pa.string()))
    local = pc.if_else(pa.array(domain == 0), qq_number, _join(people.name_pinyin, suffix))
    return _join(local, "@", _pick(vocabulary.email_domain, domain))


def _accounts(rng: np.random.Generator, run: _Run, first: int, n: int) -> tuple[_Holders, dict[str, pa.Array]]:
    people = _people(rng, n, with_account=True)
    # Sign-ups grow over time: density rising towards ``until``.
    created = _ACCOUNTS_FROM + (rng.random(n) ** _SIGNUP_SKEW * (run.until - _ACCOUNTS_FROM)).astype(np.int64)
    age_days = ((16 + 64 * rng.beta(2.0, 5.0, n)) * 365.25).astype(np.int64)
    birth_day = created // _DAY - age_days
    birth_year = birth_day.astype("datetime64[D]").astype("datetime64[Y]").astype(np.int64) + 1970
    activity = rng.lognormal(-_ACTIVITY_SIGMA ** 2 / 2, _ACTIVITY_SIGMA, n)
    holders = _Holders(
        people=people,
        account_id=_text(np.hstack([_ascii("A", n), _digits(np.arange(first, first + n), 10)])),
        created=created, activity=activity,
        id_card=_id_cards(rng, people.region_chars, birth_day, people.female),
        ip24=_random_ip24(rng, n),
        friend=(np.arange(n) + rng.integers(1, max(n, 2), n)) % n,
        contact=rng.integers(0, max(1, int(n * _CONTACT_POOL_SHARE)), n),
        pay_with=_draw(rng, n, [6, 45, 35, 10, 4]),
    )
    gender = _taken(_strings(("female", "male")), np.where(people.female, 0, 1), rng.random(n) < 0.7)
    birthday_given = rng.random(n) < 0.6
    columns = {
        "account_id": holders.account_id,
        "phone": people.phone,
        "nickname": _nicknames(rng, people, birth_year),
        "email": _taken(_emails(rng, people, birth_year), np.arange(n), rng.random(n) < 0.3),
        "birthday": pa.array(birth_day.astype(np.int32), type=pa.date32(), mask=~birthday_given),
        "gender": gender,
        "region": _taken(people.region, np.arange(n), rng.random(n) < 0.8),
        "created_at": _timestamps(created),
    }
    return holders, columns
