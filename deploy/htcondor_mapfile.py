"""Build the schedd's SciTokens mapfile and its local-account list from IAM's user list.

The schedd authenticates a user's ``condor`` token as ``<issuer>,<sub>`` (issuer with its trailing
slash) and maps that, through ``CERTIFICATE_MAPFILE``, to a local account that must be the user's
hub name, so that HTCondor's ``Owner`` is the user the cluster service checks. Each account also
needs a stable uid in the schedd container. Writing the regexes by hand is where this goes wrong
(unescaped dots or slashes match too much or nothing), so this script writes them.

Input is IAM's SCIM user list, fetched by you with a token holding ``scim:read``::

    curl -s -H "Authorization: Bearer $SCIM_TOKEN" 'https://cms-auth.cern.ch/scim/Users?count=1000' > scim.json
    python deploy/htcondor_mapfile.py --issuer https://cms-auth.cern.ch/ --scim scim.json \\
        --mapfile mapfile --users users [--previous-users users]

``--previous-users`` keeps every uid already handed out; new accounts get the next free uids.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

#: Hub user names the schedd can have as local accounts (lower-case POSIX names).
ACCOUNT_NAME = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
FIRST_UID = 20001
#: Characters with a meaning in a (PCRE) regex outside a class, plus the mapfile's delimiter "/".
REGEX_SPECIALS = set("\\.^$*+?()[]{}|/")


def escape(text: str) -> str:
    """``text`` as a literal inside the mapfile's ``/.../`` regex."""
    return "".join("\\" + ch if ch in REGEX_SPECIALS else ch for ch in text)


def mapfile_line(issuer: str, subject: str, account: str) -> str:
    """One ``SCITOKENS /^<issuer>,<subject>$/ <account>`` line, every regex character escaped.

    Slashes are escaped too: with ``CERTIFICATE_MAPFILE_ASSUME_HASH_KEYS = True`` HTCondor reads
    the text between the outer slashes as the regex.
    """
    if not issuer.endswith("/"):
        issuer += "/"
    if not ACCOUNT_NAME.match(account):
        raise ValueError(f"{account!r} cannot be a local account name")
    return f"SCITOKENS /^{escape(issuer)},{escape(subject)}$/ {account}"


def parse_users_file(text: str) -> dict[str, int]:
    """``<name> <uid>`` lines (the ConfigMap's ``users`` key) → ``{name: uid}``."""
    accounts: dict[str, int] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, uid = line.split()
            accounts[name] = int(uid)
    return accounts


def scim_accounts(scim: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(subject, account)`` of each active user of a SCIM ``ListResponse``, sorted by account."""
    pairs = []
    for user in scim.get("Resources", []):
        if user.get("active", True):
            pairs.append((user["id"], user["userName"].lower()))
    return sorted(pairs, key=lambda pair: pair[1])


def build(issuer: str, accounts: Iterable[tuple[str, str]], previous: Mapping[str, int],
          first_uid: int = FIRST_UID) -> tuple[str, str]:
    """The mapfile and users texts; uids in ``previous`` are kept, new accounts get fresh ones."""
    uids = dict(previous)
    next_uid = max([first_uid - 1, *uids.values()]) + 1
    lines, skipped = [], []
    for subject, account in accounts:
        if not ACCOUNT_NAME.match(account):
            skipped.append(account)
            continue
        lines.append(mapfile_line(issuer, subject, account))
        if account not in uids:
            uids[account] = next_uid
            next_uid += 1
    if skipped:
        print(f"skipped {len(skipped)} IAM users whose names cannot be local accounts: {', '.join(skipped)}",
              file=sys.stderr)
    users = "".join(f"{name} {uid}\n" for name, uid in sorted(uids.items(), key=lambda item: item[1]))
    return "".join(line + "\n" for line in lines), users


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--issuer", required=True, help="IAM issuer URL, e.g. https://cms-auth.cern.ch/")
    parser.add_argument("--scim", required=True, type=Path, help="IAM SCIM /scim/Users response (JSON)")
    parser.add_argument("--mapfile", required=True, type=Path, help="mapfile to write")
    parser.add_argument("--users", required=True, type=Path, help="accounts file to write (<name> <uid>)")
    parser.add_argument("--previous-users", type=Path, help="accounts file whose uids must not change")
    parser.add_argument("--first-uid", type=int, default=FIRST_UID, help="first uid for new accounts")
    args = parser.parse_args(argv)
    previous = parse_users_file(args.previous_users.read_text()) if args.previous_users else {}
    mapfile, users = build(args.issuer, scim_accounts(json.loads(args.scim.read_text())), previous, args.first_uid)
    args.mapfile.write_text(mapfile)
    args.users.write_text(users)
    print(f"{len(mapfile.splitlines())} identities mapped, {len(users.splitlines())} accounts", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
