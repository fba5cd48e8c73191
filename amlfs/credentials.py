"""Which environment variables hold amlfs's secrets, and the environment each child gets.

A datastore names the variable its credential comes from (`--connection-string-env`,
`--account-key-env`, `--sas-token-env`); those variables, of every datastore in the
registry, are amlfs's secrets. A mount daemon gets its own datastore's variable and no
other; a job's command gets none, unless the user passes one on (`amlfs run --pass-env`).
Variables no datastore names (the AZURE_* of the Azure SDK's default credential chain
among them) are the user's environment and are left as they are.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from amlfs.registry.models import Datastore


def credential_variables(datastores: Iterable[Datastore]) -> set[str]:
    """The variables DATASTORES read their credentials from."""
    return {ds.credential_env for ds in datastores if ds.credential_env}


def daemon_environment(datastores: Iterable[Datastore], own: str,
                       env: Mapping[str, str] = os.environ) -> dict[str, str]:  # fmt: skip
    """ENV for the daemon of a mount of datastore OWN: every credential variable of
    DATASTORES (the registry's) removed, but OWN's."""
    datastores = list(datastores)
    keep = credential_variables(ds for ds in datastores if ds.name == own)
    drop = credential_variables(datastores) - keep
    return {name: value for name, value in env.items() if name not in drop}


def job_environment(datastores: Iterable[Datastore], passed: Iterable[str] = (),
                    env: Mapping[str, str] = os.environ) -> dict[str, str]:  # fmt: skip
    """ENV for a job's command: no credential variable of DATASTORES but those PASSED."""
    drop = credential_variables(datastores) - set(passed)
    return {name: value for name, value in env.items() if name not in drop}
