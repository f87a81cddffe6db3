# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Ansible adapter: XenAPI connection options, and every CbtBackupError to fail_json with its code.

Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
"""

from __future__ import absolute_import, division, print_function

from ansible.module_utils.basic import env_fallback, missing_required_lib

from .._backup import progress as _progress
from .._backup.each import XENAPI_WORKERS, run_each_with_client
from .._errors import CbtBackupError
from .._xenapi.client import HAS_XENAPI, XENAPI_IMPORT_ERROR, XenApiClient, XenApiError
from .nbd_advice import with_advice

__metaclass__ = type


def connection_argument_spec():
    """The options of the ``xenserver.cbt_backup._xenapi`` doc fragment."""
    return dict(
        hostname=dict(type='str', aliases=['host', 'pool'], fallback=(env_fallback, ['XENSERVER_HOST'])),
        username=dict(type='str', aliases=['user', 'admin'], fallback=(env_fallback, ['XENSERVER_USER'])),
        password=dict(type='str', aliases=['pass', 'pwd'], no_log=True, fallback=(env_fallback, ['XENSERVER_PASSWORD'])),
        session_id=dict(type='str', no_log=True),
        validate_certs=dict(type='bool', default=True, fallback=(env_fallback, ['XENSERVER_VALIDATE_CERTS'])),
        ca_path=dict(type='path'),
        api_timeout=dict(type='float', default=60),
    )


def nbd_argument_spec():
    """The options of the ``xenserver.cbt_backup._nbd`` doc fragment (how an export is read)."""
    return dict(
        connections=dict(type='int', default=4),
        requests_in_flight=dict(type='int', default=8),
        tls=dict(type='bool', default=True),
        tls_ca_path=dict(type='path'),
        timeout=dict(type='float', default=60),
        retries=dict(type='int', default=3),
    )


def vm_backup_argument_spec():
    """The options of the ``xenserver.cbt_backup._vm_backup`` doc fragment (which VM's backup run)."""
    return dict(
        repository_root=dict(type='path', required=True),
        vm=dict(type='str', required=True),
        point=dict(type='str', default='latest'),
    )


def argument_spec(**module_options):
    spec = connection_argument_spec()
    spec.update(module_options)
    return spec


def check_libraries(module):
    if not HAS_XENAPI:
        module.fail_json(msg=missing_required_lib('XenAPI'), exception=str(XENAPI_IMPORT_ERROR), error_code='LIBRARY_MISSING')


def check_api_timeout(module):
    """api_timeout must be finite and above 0 (nan, inf and negatives gave tracebacks deep in the socket layer)."""
    value = module.params.get('api_timeout')
    if value is not None and not 0 < value < float('inf'):  # false for nan too
        module.fail_json(msg='api_timeout must be a finite number of seconds above 0, not %s' % value,
                         error_code='INVALID_OPTION')


def make_client(module):
    """A not yet opened XenApiClient from the module's connection options (fails the module on bad options)."""
    check_libraries(module)
    check_api_timeout(module)
    params = module.params
    try:
        return XenApiClient(params['hostname'], username=params['username'], password=params['password'],
                            session_id=params['session_id'], validate_certs=params['validate_certs'],
                            ca_path=params['ca_path'], timeout=params['api_timeout'])
    except XenApiError as exc:
        fail(module, exc)


def fail(module, exc, **result):
    """fail_json for any CbtBackupError: ``error_code`` and ``error_type`` always, the error's ``result`` facts.

    A host's own XenAPI error also comes back in ``xenapi_error`` (code and parameters as the host said them);
    conditions the collection detects itself (NOT_FOUND, AMBIGUOUS, ...) have an ``error_code`` but no
    ``xenapi_error``, so the latter only ever holds what a host said.
    """
    result.update(error_facts(exc))
    module.fail_json(**result)


def error_facts(exc):
    """What :func:`fail` reports of a CbtBackupError (``msg`` with its advice), as a dict: also the
    per-item result of a step that handles many items."""
    facts = dict(exc.result)
    facts.update(msg=with_advice(exc.message, getattr(exc, 'situation', None)), error_code=exc.code,
                 error_type=type(exc).__name__)
    if getattr(exc, 'from_host', False):
        facts['xenapi_error'] = exc.as_dict()
    return facts


def run(module, action, on_success=None):
    """Open a client, call ``action(client)`` -> result dict, close (log out) and exit; failures end in fail_json.

    A session this module logged in itself is logged out before the module exits, also on failure.
    ``on_success`` is called right before a successful exit (never before a failure), e.g. to let a result
    carry a value that is masked as no_log until then.
    """
    client = make_client(module)
    try:
        try:
            client.open()
            result = action(client)
        finally:
            client.close()
    except CbtBackupError as exc:
        fail(module, exc)
    warnings = result.pop('warnings', [])
    for warning in warnings:
        module.warn(warning)
    if on_success is not None:
        on_success()
    module.exit_json(**result)


def item_entries(module, outcomes, describe):
    """The list form's per-item results: each successful result with ``failed: false`` (its warnings become the
    module's, prefixed with the item), each error as :func:`error_facts` with ``failed: true``; ``describe(index)``
    gives the facts that name the item (its uuid, repository...), put in front of either."""
    entries = []
    for index, outcome in enumerate(outcomes):
        named = describe(index)
        if isinstance(outcome, CbtBackupError):
            entry = dict(named, **error_facts(outcome))
            entry['failed'] = True
        else:
            entry = dict(named, **outcome)
            entry['failed'] = False
            label = ' '.join(str(value) for value in named.values())
            for warning in entry.pop('warnings', []):
                module.warn('%s: %s' % (label, warning))
        entries.append(entry)
    return entries


def exit_with_items(module, key, entries, error_code, what, name_key, **facts):
    """End a list form: ``key`` holds ``entries`` (from :func:`item_entries`), ``changed`` when any item changed;
    failed (with ``error_code``, naming each failed item by its ``name_key`` fact) when any item failed. ``what``
    names the items in the message (``exports``, ``VM snapshots``...)."""
    facts[key] = entries
    facts['changed'] = any(entry.get('changed') for entry in entries)
    diffs = [entry.pop('diff') for entry in entries if 'diff' in entry]
    if diffs:
        facts['diff'] = diffs
    failed = [entry for entry in entries if entry['failed']]
    if failed:
        module.fail_json(msg='%d of %d %s failed: %s' % (len(failed), len(entries), what, '; '.join(
            '%s: %s' % (entry[name_key], entry['msg']) for entry in failed)), error_code=error_code, **facts)
    module.exit_json(**facts)


def run_items(module, key, items, one, name_key, error_code, what, name_of=lambda item: item, workers=XENAPI_WORKERS):
    """The list form of a XenAPI step: ``one(client, item)`` for every item in this module's one session, a few at
    a time; the results under ``key``, each named by ``{name_key: name_of(item)}`` (see :func:`exit_with_items`)."""
    client = make_client(module)
    try:
        try:
            client.open()
            outcomes = run_each_with_client(client, items, one, workers)
        finally:
            client.close()
    except CbtBackupError as exc:
        fail(module, exc)
    entries = item_entries(module, outcomes, lambda index: {name_key: name_of(items[index])})
    exit_with_items(module, key, entries, error_code, what, name_key)


def start_progress(module, path, labels, lease_seconds, nothing_done):
    """A started progress.ProgressWatch writing ``path`` for ``labels`` (None without ``path``); fails the task,
    saying ``nothing_done``, when the first document cannot be written."""
    if not path:
        return None
    watch = _progress.ProgressWatch(path, labels, lease_seconds=lease_seconds)
    try:
        return watch.start()
    except (IOError, OSError) as exc:
        watch.stop()
        module.fail_json(msg='cannot write progress_file %s: %s; %s' % (path, exc, nothing_done), error_code='WRITE_FAILED')


def close_after_progress(module, client, watch, logout_on_abandon):
    """The end of a run watched by ``watch`` (a ProgressWatch or None): close ``client`` (which logs out a session
    it logged in), and, when the run was abandoned (its lease ran out: the playbook that would have logged out is
    gone) and ``logout_on_abandon`` is set, log out the session it was given too. Then stop the watch, which
    removes the progress and lease files. Never raises: a failed logout becomes a warning."""
    try:
        if client is not None:
            if watch is not None and logout_on_abandon and not client.logged_in:
                watch.await_waiter()
                if watch.abandoned:
                    try:
                        client.logout()
                    except CbtBackupError as exc:
                        module.warn('the run was abandoned, but logging out its session failed: %s' % exc)
            client.close()
    finally:
        if watch is not None:
            watch.stop()
