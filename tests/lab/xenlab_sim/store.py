# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""In-memory object database with xapi's reference and error conventions."""

from __future__ import absolute_import, division, print_function

import copy
import threading
import uuid as uuidlib

from .schema import INVERSE_FIELDS, NULL_REF, SCHEMA

__metaclass__ = type


class XenAPIError(Exception):
    """A XenAPI failure: becomes {'Status': 'Failure', 'ErrorDescription': [code, params...]}."""

    def __init__(self, code, *params):
        super(XenAPIError, self).__init__(code, *params)
        # xapi sends every error parameter as a string.
        self.details = [code] + [str(p) for p in params]


def new_ref():
    return 'OpaqueRef:' + str(uuidlib.uuid4())


def new_uuid():
    return str(uuidlib.uuid4())


class Store:
    """Tables of records keyed by ref. All access goes through ``lock`` (re-entrant)."""

    def __init__(self):
        self.lock = threading.RLock()
        self.tables = dict((cls, {}) for cls in SCHEMA)
        # (class, field) -> function(ref): fields derived from the state at read time.
        self.computed = {}

    def create(self, cls, **fields):
        record = dict(copy.deepcopy(SCHEMA[cls]))
        unknown = set(fields) - set(record)
        if unknown:
            raise ValueError('unknown %s fields: %s' % (cls, sorted(unknown)))
        # Copies: a record never shares a list or map with its source (VM.snapshot copies the VM's
        # tags and other_config; changing the VM's afterwards must not change the snapshot's).
        record.update(copy.deepcopy(fields))
        if not record.get('uuid'):
            record['uuid'] = new_uuid()
        ref = new_ref()
        with self.lock:
            self.tables[cls][ref] = record
        return ref

    def exists(self, cls, ref):
        return ref in self.tables[cls]

    def raw(self, cls, ref):
        """The stored (mutable) record, or HANDLE_INVALID [class, ref]."""
        try:
            return self.tables[cls][ref]
        except (KeyError, TypeError):
            raise XenAPIError('HANDLE_INVALID', cls, ref) from None

    def get(self, cls, ref, field):
        if (cls, field) in self.computed:
            self.raw(cls, ref)
            return self.computed[(cls, field)](ref)
        if (cls, field) in INVERSE_FIELDS:
            self.raw(cls, ref)
            return self._inverse(cls, ref, field)
        return copy.deepcopy(self.raw(cls, ref)[field])

    def record(self, cls, ref):
        """A full copy of the record, inverse fields filled in, in datamodel order."""
        raw = self.raw(cls, ref)
        result = {}
        for field, _default in SCHEMA[cls]:
            if (cls, field) in self.computed:
                result[field] = self.computed[(cls, field)](ref)
            elif (cls, field) in INVERSE_FIELDS:
                result[field] = self._inverse(cls, ref, field)
            else:
                result[field] = copy.deepcopy(raw[field])
        return result

    def _inverse(self, cls, ref, field):
        other_cls, back = INVERSE_FIELDS[(cls, field)]
        return [r for r, rec in self.tables[other_cls].items() if rec[back] == ref]

    def set(self, cls, ref, **fields):
        raw = self.raw(cls, ref)
        for key in fields:
            if key not in raw:
                raise ValueError('unknown %s field %s' % (cls, key))
        raw.update(fields)

    def destroy(self, cls, ref):
        self.raw(cls, ref)
        del self.tables[cls][ref]

    def all(self, cls):
        return list(self.tables[cls])

    def find(self, cls, **match):
        return [ref for ref, rec in self.tables[cls].items()
                if all(rec.get(k) == v for k, v in match.items())]

    def one(self, cls, **match):
        refs = self.find(cls, **match)
        return refs[0] if refs else NULL_REF

    def by_uuid(self, cls, uuid):
        for ref, rec in self.tables[cls].items():
            if rec['uuid'] == uuid:
                return ref
        raise XenAPIError('UUID_INVALID', cls, uuid)
