# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A step over many items in one module run (the list forms): each item alone, a few at a time.

Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.

A module run costs Ansible's per-task overhead (a process, the module's transfer, its arguments) once, where a loop
pays it per item: the list forms exist so that a run over a pool costs O(steps) tasks, not O(steps x disks). An item
that fails fails alone: its error is its result, the others go on.
"""

from __future__ import absolute_import, division, print_function

import threading

from .._errors import CbtBackupError

__metaclass__ = type

# XenAPI calls wait on the host (a VM snapshot takes seconds on a real pool), so a few run at once; xapi
# serialises what must be serialised per object itself.
XENAPI_WORKERS = 4


def run_each(items, one, workers=1):
    """``one(item)`` for every item, at most ``workers`` at once.

    Returns a list in the order of ``items``: each the item's result or the :class:`CbtBackupError` that ended it
    (any other exception becomes one with code ``UNEXPECTED_ERROR``, so that no item's failure is lost in a thread).
    """
    return _run(items, lambda worker: one, workers)


def run_each_with_client(client, items, one, workers=XENAPI_WORKERS):
    """``one(client, item)`` for every item, at most ``workers`` at once, each worker on its own connection of
    ``client``'s session (an XML-RPC connection serves one call at a time); results as :func:`run_each`."""
    siblings = []
    lock = threading.Lock()

    def for_worker(worker):
        if worker == 0:
            worker_client = client
        else:
            worker_client = client.sibling()
            with lock:
                siblings.append(worker_client)
        return lambda item: one(worker_client, item)

    try:
        return _run(items, for_worker, workers)
    finally:
        for sibling in siblings:
            sibling.close()  # never logs out: the session is the caller's


def _run(items, make_worker, workers):
    items = list(items)
    results = [None] * len(items)
    pending = list(range(len(items)))
    lock = threading.Lock()

    def work(worker):
        try:
            one = make_worker(worker)
        except Exception as exc:  # pylint: disable=broad-except
            one = _failing(exc)
        while True:
            with lock:
                if not pending:
                    return
                index = pending.pop(0)
            results[index] = _outcome(one, items[index])

    count = max(1, min(workers, len(items)))
    threads = [threading.Thread(target=work, args=(worker,), name='item-worker-%d' % worker) for worker in range(1, count)]
    for thread in threads:
        thread.daemon = True
        thread.start()
    work(0)
    for thread in threads:
        thread.join()
    return results


def _failing(exc):
    def one(item):
        raise exc
    return one


def _outcome(one, item):
    try:
        return one(item)
    except CbtBackupError as exc:
        return exc
    except Exception as exc:  # pylint: disable=broad-except
        return CbtBackupError('unexpected error: %s: %s' % (type(exc).__name__, exc), code='UNEXPECTED_ERROR')
