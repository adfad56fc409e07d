"""Stand-ins for the demo's side effects, for what-if forks: ``--fake NAME=module:function``.

From the shell::

    replayable fork RUN --import replayable.demo.agent --at choose_record#1 --live-from \\
        --fake delete_record=replayable.demo.fakes:delete_record
"""

from __future__ import annotations

from typing import Any


def delete_record(customer_id: int) -> dict[str, Any]:
    """Say what would be deleted, and delete nothing."""
    return {"deleted": 0, "customer_id": customer_id, "fake": True}
