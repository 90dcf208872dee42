"""The talking thread's own bookkeeping: a fresh Link replaces the old one in the poll whatever the
old one's state."""

from __future__ import annotations

from numpy_cnn.distributed.talk import Talk
from numpy_cnn.distributed.worker import Worker


def test_a_link_lost_while_a_job_computes_is_replaced(tmp_path):
    """While a job computes, the socket is out of the poll (Talk.run); a connection that drops
    then must still give way to a fresh Link (it once raised KeyError in Poller.unregister)."""
    talk = Talk(Worker(0), f"ipc://{tmp_path}/server", keys=None, join_timeout=5.0)
    try:
        old = talk.link
        with talk.lock:  # what run does when a job starts computing
            talk.poller.unregister(old.socket)
        talk.listening = False
        talk._connect()  # what _lost does
        assert talk.link is not old and old.socket.closed and talk.listening
        registered = [s for s, _ in talk.poller.sockets]
        assert talk.link.socket in registered and talk.link.monitor in registered
        assert old.socket not in registered and old.monitor not in registered
    finally:
        talk.close()
