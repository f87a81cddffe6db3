# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""XenAPI methods of the lab: dispatch, generic getters/setters and the CBT-related calls.

Checks run in the order xapi's message forwarding and Xapi_vdi.check_operation_error use, so a
call that breaks two rules gets the same error code a real host gives.
"""

from __future__ import absolute_import, division, print_function

import inspect
import time
import traceback
import xmlrpc.client
from xml.sax.saxutils import escape

from .cbt import Unrelated, encode_bitmap
from .lab import NBD_PURPOSES, xapi_now
from .schema import CLASS_SETTABLE, NULL_REF, SCHEMA, SETTABLE
from .store import XenAPIError

__metaclass__ = type

VDI_TYPES = ('system', 'user', 'ephemeral', 'suspend', 'crashdump', 'ha_statefile', 'metadata', 'redo_log',
             'rrd', 'pvs_cache', 'cbt_metadata')
# How long data_destroy waits for the VDI's VBDs to go away (xapi: 4 s).
VBD_WAIT_SECONDS = 4.0
ERR_460 = 'SR_BACKEND_FAILURE_460'
MSG_460 = 'Failed to calculate changed blocks for given VDIs. [opterr=%s]'

_METHODS = {}


def api(name):
    """Register ``func(ctx, session, *args)`` as XenAPI method ``name``."""
    def register(func):
        _METHODS[name] = func
        return func
    return register


def as_int(value, field='value'):
    """xapi takes 64-bit ints as <int>/<i8> or as a decimal string (python clients send strings)."""
    if isinstance(value, bool):
        raise XenAPIError('FIELD_TYPE_ERROR', field)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise XenAPIError('FIELD_TYPE_ERROR', field) from None


def to_wire(value):
    """Encode like xapi's non-strict XML-RPC: ints as strings, bools as booleans."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, dict):
        return dict((str(k), to_wire(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return [to_wire(v) for v in value]
    return value


# Fields of type datetime in the classes the lab serves.
DATETIME_FIELDS = {'snapshot_time', 'created', 'finished', 'last_active', 'validation_time', 'timestamp',
                   'start_time', 'install_time', 'last_updated'}


def wire_record(record):
    out = to_wire(record)
    for field in DATETIME_FIELDS & set(out):
        out[field] = xmlrpc.client.DateTime(out[field])
    return out


class Context:
    """What a method implementation sees: the lab and the caller's session."""

    def __init__(self, lab, session):
        self.lab = lab
        self.store = lab.store
        self.session = session


class Dispatcher:
    def __init__(self, lab):
        self.lab = lab

    def call(self, method, params):
        """Run one XML-RPC call; returns the Success/Failure envelope."""
        try:
            value = self._call(method, list(params))
            return {'Status': 'Success', 'Value': value}
        except XenAPIError as err:
            return {'Status': 'Failure', 'ErrorDescription': err.details}
        except Exception as err:  # pylint: disable=broad-except
            # A lab bug must not look like a network error to the client: report it as xapi would.
            traceback.print_exc()
            return {'Status': 'Failure', 'ErrorDescription': ['INTERNAL_ERROR', '%s: %s' % (method, err)]}

    def _call(self, method, params):
        if method.startswith('Async.'):
            return self._async(method[len('Async.'):], params)
        func, arity = self._lookup(method)
        if method == 'session.login_with_password':
            self._check_arity(method, arity, params)
            return func(Context(self.lab, None), *params)
        if not params or not self.lab.session_valid(params[0]):
            raise XenAPIError('SESSION_INVALID', params[0] if params and params[0] is not None else '')
        self._check_arity(method, arity, params)
        with self.lab.lock:
            self.lab.store.set('session', params[0], last_active=xapi_now())
        result = func(Context(self.lab, params[0]), *params[1:])
        return to_wire(result) if not isinstance(result, WireValue) else result.value

    @staticmethod
    def _check_arity(method, arity, params):
        low, high = arity
        if not low <= len(params) <= high:
            raise XenAPIError('MESSAGE_PARAMETER_COUNT_MISMATCH', method, high, len(params))

    def _lookup(self, method):
        if method in _METHODS:
            func = _METHODS[method]
            sig = inspect.signature(func)
            args = list(sig.parameters.values())[1:]  # drop ctx; the session counts as a parameter
            required = len([a for a in args if a.default is inspect.Parameter.empty])
            if method == 'session.login_with_password':
                return func, (required, len(args))
            return func, (required + 1, len(args) + 1)
        generic = generic_method(method)
        if generic is None:
            raise XenAPIError('MESSAGE_METHOD_UNKNOWN', method)
        return _locked(generic[0]), generic[1]

    def _async(self, method, params):
        """Async.X.y: run it now and hand back a finished task whose result is an XML-RPC fragment."""
        func, arity = self._lookup(method)
        if not params or not self.lab.session_valid(params[0]):
            raise XenAPIError('SESSION_INVALID', params[0] if params else '')
        self._check_arity(method, arity, params)
        with self.lab.lock:
            task = self.lab.store.create('task', name_label='Async.' + method, created=xapi_now(),
                                         resident_on=self.lab.master())
        try:
            result = func(Context(self.lab, params[0]), *params[1:])
        except XenAPIError as err:
            self.lab.task_finish(task, error=err.details)
            return task
        if isinstance(result, WireValue):
            result = result.value
        else:
            result = to_wire(result)
        fragment = '' if result in ('', None) else xmlrpc.client.dumps((result,), allow_none=True)
        if isinstance(result, str):
            fragment = '<value>%s</value>' % escape(result)
        elif fragment:
            fragment = fragment.split('<param>', 1)[1].rsplit('</param>', 1)[0].strip()
        self.lab.task_finish(task, result=fragment)
        return task


def _locked(func):
    """Generic getters and setters read or change the tables under the lab lock."""
    def run(ctx, *args):
        with ctx.lab.lock:
            return func(ctx, *args)
    return run


class WireValue:
    """A result that is already wire-encoded (records with DateTime objects)."""

    def __init__(self, value):
        self.value = value


# ----- generic per-class methods ----------------------------------------------------------------

def generic_method(method):
    """get_all, get_record, get_by_uuid, get_<field>, set_<field>... for every class in SCHEMA."""
    if '.' not in method:
        return None
    cls, name = method.split('.', 1)
    if cls not in SCHEMA:
        return None
    fields = dict(SCHEMA[cls])

    def ref_arg(func):
        return func, (2, 2)

    if name == 'get_all':
        return (lambda ctx: ctx.store.all(cls)), (1, 1)
    if name == 'get_all_records':
        return (lambda ctx: WireValue(dict((r, wire_record(ctx.store.record(cls, r)))
                                           for r in ctx.store.all(cls)))), (1, 1)
    if name == 'get_record':
        return ref_arg(lambda ctx, ref: WireValue(wire_record(ctx.store.record(cls, ref))))
    if name == 'get_by_uuid':
        return ref_arg(lambda ctx, uuid: ctx.store.by_uuid(cls, uuid))
    if name == 'get_by_name_label' and 'name_label' in fields:
        return ref_arg(lambda ctx, label: ctx.store.find(cls, name_label=label))
    if name.startswith('get_') and name[4:] in fields:
        field = name[4:]
        return ref_arg(lambda ctx, ref: WireValue(wire_record({field: ctx.store.get(cls, ref, field)})[field]))
    return _generic_setter(cls, name, fields)


def typed_value(default, value, field='value'):
    """``value`` as the type of the field whose default is ``default`` (xapi unmarshals every call by type)."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise XenAPIError('FIELD_TYPE_ERROR', field)
        return value
    if isinstance(default, int):
        return as_int(value, field)
    if isinstance(default, float):
        try:
            return float(value)
        except (TypeError, ValueError):
            raise XenAPIError('FIELD_TYPE_ERROR', field) from None
    if isinstance(default, dict):
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise XenAPIError('FIELD_TYPE_ERROR', field)
        return dict((str(k), v) for k, v in value.items())
    if isinstance(default, list):
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise XenAPIError('FIELD_TYPE_ERROR', field)
        return list(value)
    if not isinstance(value, str):
        raise XenAPIError('FIELD_TYPE_ERROR', field)
    return value


def _settable(cls, field):
    return field in SETTABLE or field in CLASS_SETTABLE.get(cls, ())


def _generic_setter(cls, name, fields):
    if name.startswith('set_') and _settable(cls, name[4:]) and name[4:] in fields:
        field = name[4:]
        checked = field in CLASS_SETTABLE.get(cls, ())

        def setter(ctx, ref, value):
            if checked:
                value = typed_value(fields[field], value)
            ctx.store.set(cls, ref, **{field: value})
            return ''
        return setter, (3, 3)
    if name.startswith('add_to_') and _settable(cls, name[7:]) and isinstance(fields.get(name[7:]), dict):
        field = name[7:]

        def add_to(ctx, ref, key, value):
            current = ctx.store.raw(cls, ref)[field]
            if key in current:
                raise XenAPIError('MAP_DUPLICATE_KEY', cls, field, ref, key)
            current[key] = value
            return ''
        return add_to, (4, 4)
    if name.startswith('remove_from_') and _settable(cls, name[12:]) and isinstance(fields.get(name[12:]), dict):
        field = name[12:]

        def remove_from(ctx, ref, key):
            ctx.store.raw(cls, ref)[field].pop(key, None)
            return ''
        return remove_from, (3, 3)
    if name in ('add_tags', 'remove_tags') and 'tags' in fields:
        def tags(ctx, ref, value):
            current = ctx.store.raw(cls, ref)['tags']
            if name == 'add_tags' and value not in current:
                current.append(value)
            if name == 'remove_tags' and value in current:
                current.remove(value)
            return ''
        return tags, (3, 3)
    return None


# ----- session, pool, host ----------------------------------------------------------------------

@api('session.login_with_password')
def session_login_with_password(ctx, uname, pwd, version='', originator=''):  # pylint: disable=unused-argument
    lab = ctx.lab
    if (uname, pwd) != (lab.settings['username'], lab.settings['password']):
        # xapi sleeps before answering a failed login (5 s) to slow down guessing.
        time.sleep(lab.settings.get('auth_failure_delay', 5.0))
        raise XenAPIError('SESSION_AUTHENTICATION_FAILED', uname, 'Authentication failure')
    with lab.lock:
        return ctx.store.create('session', this_host=lab.master(), last_active=xapi_now(), validation_time=xapi_now(),
                                originator=str(originator), auth_user_name=uname)


@api('session.logout')
def session_logout(ctx):
    with ctx.lab.lock:
        ctx.store.destroy('session', ctx.session)
    return ''


@api('session.get_uuid')
def session_get_uuid(ctx, self_ref):
    return ctx.store.get('session', self_ref, 'uuid')


@api('host.get_server_certificate')
def host_get_server_certificate(ctx, host):
    ctx.store.raw('host', host)
    return ctx.lab.settings['host_cert_pem']


# ----- network ----------------------------------------------------------------------------------

@api('network.add_purpose')
def network_add_purpose(ctx, network, value):
    lab = ctx.lab
    with lab.lock:
        rec = ctx.store.raw('network', network)
        if value not in NBD_PURPOSES:
            raise XenAPIError('FIELD_TYPE_ERROR', 'value')
        if not rec['managed']:
            raise XenAPIError('NETWORK_UNMANAGED', network)
        if value in rec['purpose']:
            return ''
        # NBD with TLS and without it cannot be mixed anywhere in the pool.
        for other in ctx.store.all('network'):
            for purpose in ctx.store.raw('network', other)['purpose']:
                if purpose != value and {purpose, value} == set(NBD_PURPOSES):
                    raise XenAPIError('NETWORK_INCOMPATIBLE_PURPOSES', value, purpose)
        rec['purpose'].insert(0, value)
    lab.apply_nbd_mode()
    return ''


@api('network.remove_purpose')
def network_remove_purpose(ctx, network, value):
    lab = ctx.lab
    with lab.lock:
        rec = ctx.store.raw('network', network)
        if value not in NBD_PURPOSES:
            raise XenAPIError('FIELD_TYPE_ERROR', 'value')
        if value in rec['purpose']:
            rec['purpose'].remove(value)
    lab.apply_nbd_mode()
    return ''


# ----- VDI operation checks ---------------------------------------------------------------------

def _sr_supports(ctx, vdi_rec, sr_op):
    sr = vdi_rec['SR']
    if sr_op not in ctx.store.raw('SR', sr)['allowed_operations']:
        raise XenAPIError('SR_OPERATION_NOT_SUPPORTED', sr)


def _attached_vbds(ctx, vdi):
    return [v for v in ctx.store.find('VBD', VDI=vdi) if ctx.store.raw('VBD', v)['currently_attached']]


def check_not_cbt_metadata(vdi, rec):
    if rec['type'] == 'cbt_metadata':
        raise XenAPIError('VDI_INCOMPATIBLE_TYPE', vdi, 'cbt_metadata')


def _check_cbt_toggle(ctx, vdi, sr_op):
    """Checks shared by enable_cbt and disable_cbt, in xapi's order."""
    rec = ctx.store.raw('VDI', vdi)
    _sr_supports(ctx, rec, sr_op)
    check_not_cbt_metadata(vdi, rec)
    if rec['is_a_snapshot']:
        raise XenAPIError('OPERATION_NOT_ALLOWED', 'VDI is a snapshot: %s' % vdi)
    if rec['type'] not in ('user', 'system'):
        raise XenAPIError('VDI_INCOMPATIBLE_TYPE', vdi, rec['type'])
    if rec['on_boot'] == 'reset':
        raise XenAPIError('VDI_ON_BOOT_MODE_INCOMPATIBLE_WITH_OPERATION')
    return rec


@api('VDI.enable_cbt')
def vdi_enable_cbt(ctx, vdi):
    with ctx.lab.lock:
        rec = _check_cbt_toggle(ctx, vdi, 'vdi_enable_cbt')
        if not rec['cbt_enabled']:
            ctx.lab.cbt.enable(rec['uuid'], rec['virtual_size'])
            rec['cbt_enabled'] = True
    return ''


@api('VDI.disable_cbt')
def vdi_disable_cbt(ctx, vdi):
    with ctx.lab.lock:
        rec = _check_cbt_toggle(ctx, vdi, 'vdi_disable_cbt')
        if rec['cbt_enabled']:
            ctx.lab.cbt.disable(rec['uuid'])
            rec['cbt_enabled'] = False
    return ''


@api('VDI.set_on_boot')
def vdi_set_on_boot(ctx, vdi, value):
    with ctx.lab.lock:
        rec = ctx.store.raw('VDI', vdi)
        check_not_cbt_metadata(vdi, rec)
        if rec['cbt_enabled']:
            raise XenAPIError('VDI_CBT_ENABLED', vdi)
        if value not in ('persist', 'reset'):
            raise XenAPIError('FIELD_TYPE_ERROR', 'value')
        rec['on_boot'] = value
    return ''


def snapshot_vdi(ctx, vdi, extra=None):
    """VDI.snapshot: copy the content, rotate the CBT log; returns the snapshot's ref."""
    lab = ctx.lab
    rec = ctx.store.raw('VDI', vdi)
    _sr_supports(ctx, rec, 'vdi_snapshot')
    check_not_cbt_metadata(vdi, rec)
    if rec['sharable']:
        raise XenAPIError('VDI_IS_SHARABLE', vdi)
    if rec['on_boot'] == 'reset':
        raise XenAPIError('VDI_ON_BOOT_MODE_INCOMPATIBLE_WITH_OPERATION')
    if not rec['managed']:
        raise XenAPIError('VDI_NOT_MANAGED', vdi)
    inherited = ('name_label', 'name_description', 'type', 'sharable', 'other_config', 'xenstore_data', 'on_boot',
                 'allow_caching', 'tags', 'virtual_size', 'physical_utilisation', 'SR', 'sm_config')
    copied = dict((k, rec[k]) for k in inherited)
    # Only a live VDI's log rotates; a snapshot of a snapshot starts without CBT.
    cbt_on = rec['cbt_enabled'] and not rec['is_a_snapshot']
    snap = ctx.store.create('VDI', is_a_snapshot=True, snapshot_of=vdi, snapshot_time=xapi_now(),
                            cbt_enabled=cbt_on, read_only=rec['read_only'], **dict(copied, **(extra or {})))
    snap_rec = ctx.store.raw('VDI', snap)
    sr_uuid = ctx.store.raw('SR', rec['SR'])['uuid']
    path = lab.storage.path(sr_uuid, snap_rec['uuid'])
    lab.storage.copy(lab.paths[rec['uuid']], path)
    lab.paths[snap_rec['uuid']] = path
    snap_rec['location'] = snap_rec['uuid']
    if cbt_on:
        lab.cbt.snapshot(rec['uuid'], snap_rec['uuid'])
    return snap


@api('VDI.snapshot')
def vdi_snapshot(ctx, vdi, driver_params=None):  # pylint: disable=unused-argument
    with ctx.lab.lock:
        return snapshot_vdi(ctx, vdi)


def _wait_for_vbds_gone(ctx, vdi):
    """data_destroy waits (4 s in xapi) for every VBD of the VDI to be destroyed."""
    deadline = time.monotonic() + VBD_WAIT_SECONDS
    while ctx.store.find('VBD', VDI=vdi):
        if time.monotonic() >= deadline:
            return False
        ctx.lab.lock.release()
        try:
            time.sleep(0.05)
        finally:
            ctx.lab.lock.acquire()
    return True


@api('VDI.data_destroy')
def vdi_data_destroy(ctx, vdi):
    lab = ctx.lab
    with lab.lock:
        rec = ctx.store.raw('VDI', vdi)
        _sr_supports(ctx, rec, 'vdi_data_destroy')
        if not rec['is_a_snapshot']:
            raise XenAPIError('OPERATION_NOT_ALLOWED', 'VDI is not a snapshot: %s' % vdi)
        if not rec['cbt_enabled']:
            raise XenAPIError('VDI_NO_CBT_METADATA', vdi)
        if not rec['managed']:
            raise XenAPIError('VDI_NOT_MANAGED', vdi)
        if rec['type'] == 'cbt_metadata':
            return ''
        # xapi flips the type first (so nothing new can attach) and reverts it on failure.
        old_type = rec['type']
        rec['type'] = 'cbt_metadata'
        if not _wait_for_vbds_gone(ctx, vdi) or _attached_vbds(ctx, vdi):
            if ctx.store.exists('VDI', vdi):
                ctx.store.raw('VDI', vdi)['type'] = old_type
            raise XenAPIError('VDI_IN_USE', vdi, 'data_destroy')
        lab.storage.remove(lab.paths.pop(rec['uuid'], None))
        rec['physical_utilisation'] = 0
        rec['other_config']['content_id'] = '/No content: this is a cbt_metadata VDI/'
        for vm in ctx.store.find('VM', suspend_VDI=vdi):
            ctx.store.set('VM', vm, suspend_VDI=NULL_REF)
    return ''


@api('VDI.destroy')
def vdi_destroy(ctx, vdi):
    lab = ctx.lab
    with lab.lock:
        rec = ctx.store.raw('VDI', vdi)
        _sr_supports(ctx, rec, 'vdi_destroy')
        if _attached_vbds(ctx, vdi):
            raise XenAPIError('VDI_IN_USE', vdi, 'destroy')
        for vbd in ctx.store.find('VBD', VDI=vdi):
            ctx.store.destroy('VBD', vbd)
        # SM re-links the CBT chain around this log and ORs its blocks into the child's.
        lab.cbt.destroy(rec['uuid'])
        lab.storage.remove(lab.paths.pop(rec['uuid'], None))
        ctx.store.destroy('VDI', vdi)
    return ''


@api('VDI.list_changed_blocks')
def vdi_list_changed_blocks(ctx, vdi_from, vdi_to):
    lab = ctx.lab
    with lab.lock:
        from_rec = ctx.store.raw('VDI', vdi_from)
        to_rec = ctx.store.raw('VDI', vdi_to)
        _sr_supports(ctx, to_rec, 'vdi_list_changed_blocks')
        # Only vdi_to is checked; VBDs of snapshot VMs do not count as "in use".
        for vbd in _attached_vbds(ctx, vdi_to):
            vm = ctx.store.raw('VBD', vbd)['VM']
            if not (ctx.store.exists('VM', vm) and ctx.store.raw('VM', vm)['is_a_snapshot']):
                raise XenAPIError('VDI_IN_USE', vdi_to, 'list_changed_blocks')
        if vdi_from == vdi_to:
            raise XenAPIError(ERR_460, '', MSG_460 % 'Source and target VDI are same', '')
        try:
            blocks, size = lab.cbt.changed_blocks(from_rec['uuid'], to_rec['uuid'])
        except Unrelated:
            raise XenAPIError(ERR_460, '', MSG_460 % 'Source and target VDI are unrelated', '') from None
        return encode_bitmap(blocks, size)


@api('VDI.get_nbd_info')
def vdi_get_nbd_info(ctx, vdi):
    lab = ctx.lab
    store = ctx.store
    with lab.lock:
        rec = store.raw('VDI', vdi)
        check_not_cbt_metadata(vdi, rec)
        nbd_networks = set(n for n in store.all('network') if set(store.raw('network', n)['purpose']) & set(NBD_PURPOSES))
        hosts = [store.raw('PBD', p)['host'] for p in store.find('PBD', SR=rec['SR'])
                 if store.raw('PBD', p)['currently_attached']]
        infos = []
        for host in hosts:
            for pif in store.find('PIF', host=host, currently_attached=True):
                pif_rec = store.raw('PIF', pif)
                if pif_rec['network'] not in nbd_networks:
                    continue
                addresses = ([pif_rec['IP']] if pif_rec['IP'] else []) + [a.split('/')[0] for a in pif_rec['IPv6'] if a]
                for address in addresses:
                    infos.append({
                        'exportname': '/%s?session_id=%s' % (rec['uuid'], ctx.session),
                        'address': address,
                        'port': lab.nbd_port(host),
                        'cert': lab.settings['host_cert_pem'],
                        'subject': lab.settings['subject'],
                    })
        return infos


@api('VDI.create')
def vdi_create(ctx, args):
    lab = ctx.lab
    if not isinstance(args, dict):
        raise XenAPIError('FIELD_TYPE_ERROR', 'args')
    for field in ('SR', 'virtual_size', 'type'):
        if field not in args:
            raise XenAPIError('FIELD_TYPE_ERROR', field)
    size = as_int(args['virtual_size'], 'virtual_size')
    vdi_type = args['type']
    if vdi_type not in VDI_TYPES:
        raise XenAPIError('FIELD_TYPE_ERROR', 'type')
    with lab.lock:
        sr_rec = ctx.store.raw('SR', args['SR'])
        if vdi_type == 'cbt_metadata':
            raise XenAPIError('VDI_INCOMPATIBLE_TYPE', '', 'cbt_metadata')
        if 'vdi_create' not in sr_rec['allowed_operations']:
            raise XenAPIError('SR_OPERATION_NOT_SUPPORTED', args['SR'])
        if size < 0:
            raise XenAPIError('FIELD_TYPE_ERROR', 'virtual_size')
        optional = ('name_label', 'name_description', 'sharable', 'read_only', 'other_config', 'xenstore_data',
                    'sm_config', 'tags')
        fields = dict((k, args[k]) for k in optional if k in args)
        vdi = ctx.store.create('VDI', SR=args['SR'], virtual_size=size, type=vdi_type, **fields)
        rec = ctx.store.raw('VDI', vdi)
        rec['location'] = rec['uuid']
        lab.paths[rec['uuid']] = lab.storage.create(sr_rec['uuid'], rec['uuid'], size)
        return vdi


# ----- task --------------------------------------------------------------------------------------

@api('task.create')
def task_create(ctx, label, description=''):
    with ctx.lab.lock:
        return ctx.store.create('task', name_label=label, name_description=description, created=xapi_now(),
                                resident_on=ctx.lab.master())


@api('task.destroy')
def task_destroy(ctx, task):
    with ctx.lab.lock:
        ctx.store.destroy('task', task)
    return ''


@api('task.cancel')
def task_cancel(ctx, task):
    with ctx.lab.lock:
        rec = ctx.store.raw('task', task)
        if rec['status'] == 'pending':
            rec['status'] = 'cancelled'
            rec['finished'] = xapi_now()
    return ''
