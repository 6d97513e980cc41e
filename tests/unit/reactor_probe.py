"""Run as a script: can pynetdicom's reactor take a response that a ``send_*`` waits for?

``python tests/unit/reactor_probe.py [--fix]`` prints JSON: of ``rounds`` pauses made the way
every ``send_*`` makes them (``_reactor_checkpoint.clear()``, then spin until ``_is_paused``),
each right after the previous one's ``set()`` as back-to-back requests do, how many let the
reactor thread take a message put on the DIMSE queue during the pause (``stolen``). With
``--fix``, archive.compat's :func:`fix_reactor_pause` is installed first. A fresh interpreter,
so that the fix is not installed already by another test.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from pynetdicom import AE
from pynetdicom.dimse_primitives import C_ECHO

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from archive.compat import pynetdicom as compat  # noqa: E402

ROUNDS = 100
VERIFICATION = "1.2.840.10008.1.1"


def main() -> None:
    if "--fix" in sys.argv:
        compat.fix_reactor_pause()
    scp = AE(ae_title="SCP")
    scp.add_supported_context(VERIFICATION)
    server = scp.start_server(("127.0.0.1", 0), block=False)
    scu = AE(ae_title="SCU")
    scu.add_requested_context(VERIFICATION)
    assoc = scu.associate("127.0.0.1", server.server_address[1], ae_title="SCP")
    assert assoc.is_established
    checkpoint, queue = assoc._reactor_checkpoint, assoc.dimse.msg_queue
    stolen = 0
    for _ in range(ROUNDS):
        checkpoint.clear()  # what send_c_echo() does before it sends
        while not assoc._is_paused:
            time.sleep(0.0001)
        response = C_ECHO()  # stands for the response that came back at once
        response.MessageIDBeingRespondedTo = 1
        response.Status = 0x0000
        queue.put((1, response))
        time.sleep(0.005)  # the reactor looks at the queue every millisecond when it runs
        if queue.empty():
            stolen += 1
        else:
            queue.get()
        checkpoint.set()  # the response is ours: the reactor may run
    assoc.release()
    server.shutdown()
    print(json.dumps({"rounds": ROUNDS, "stolen": stolen}))


if __name__ == "__main__":
    main()
