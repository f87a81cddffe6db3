# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Giving a network the NBD purpose (or taking it away): the logic of the nbd_network module.

Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
Plain Python over an open XenApiClient (no Ansible imports).
"""

from __future__ import absolute_import, division, print_function

from ..model import find_network
from ..client import XenApiError, explain

__metaclass__ = type

NBD_PURPOSES = ('nbd', 'insecure_nbd')
PURPOSE_WORDS = {'nbd': 'NBD with TLS', 'insecure_nbd': 'NBD without TLS'}


def other_purpose(purpose):
    """The NBD purpose a pool may not hold at the same time as ``purpose``."""
    return 'insecure_nbd' if purpose == 'nbd' else 'nbd'


def describe_network(record):
    return {
        'uuid': record['uuid'],
        'name': record['name_label'],
        'purpose': list(record.get('purpose') or []),
    }


def _label(record):
    return 'network "%s" (uuid %s)' % (record['name_label'], record['uuid'])


def network_addresses(client, record):
    """IP and IPv6 addresses of the network's attached PIFs: where the NBD server listens on this network."""
    addresses = []
    for pif_ref in record.get('PIFs') or []:
        pif = client.call('PIF.get_record', pif_ref)
        if not pif.get('currently_attached'):
            continue
        if pif.get('IP'):
            addresses.append(pif['IP'])
        for address in pif.get('IPv6') or []:
            address = address.split('/')[0]
            if address:
                addresses.append(address)
    return addresses


def holders_of(client, purpose):
    """``[(ref, record)]`` of the networks in the pool that have ``purpose``."""
    records = client.call('network.get_all_records')
    return sorted(((ref, rec) for ref, rec in records.items() if purpose in (rec.get('purpose') or [])),
                  key=lambda item: item[1]['name_label'])


def incompatible_error(record, purpose, conflicting, holders):
    """A NETWORK_INCOMPATIBLE_PURPOSES error that names the networks holding the other purpose and what to do."""
    if holders:
        where = ', '.join(('this network' if rec['uuid'] == record['uuid'] else _label(rec)) for dummy, rec in holders)
        first = holders[0][1]['uuid']
    else:  # the host reported a conflict that is not visible (any more) in the records
        where = 'another network'
        first = '<network>'
    message = ('cannot add purpose %s (%s) to %s: the pool already serves %s on %s. A pool serves NBD either with '
               'TLS (nbd) or without (insecure_nbd), not both. Remove %s first (nbd_network with network=%s, '
               'purpose=%s, state=absent), or give this network purpose %s as well.'
               % (purpose, PURPOSE_WORDS[purpose], _label(record), conflicting, where, conflicting, first,
                  conflicting, conflicting))
    return XenApiError(message, code='NETWORK_INCOMPATIBLE_PURPOSES', params=[purpose, conflicting])


def no_address_warning(record, purpose):
    return ('%s has purpose %s but none of its attached PIFs has an IP or IPv6 address, so VDI.get_nbd_info returns '
            'an empty list for disks on its hosts: give the PIF of each host an address on this network (for example '
            'xe pif-reconfigure-ip), or choose a network that has one' % (_label(record), purpose))


def _call(client, method, record, *args):
    try:
        return client.call(method, *args)
    except XenApiError as exc:
        if not exc.from_host:
            raise
        raise XenApiError('%s on %s failed: %s' % (method, _label(record), explain(exc.code, exc.params)),
                          code=exc.code, params=exc.params)


def ensure_purpose(client, network, purpose='nbd', present=True, check_mode=False):
    """Add (``present``) or remove ``purpose`` on ``network`` (uuid or name).

    Returns the module result: ``changed``, ``network`` (uuid, name, purpose list after the change, addresses),
    ``diff`` (purpose lists before and after) and ``warnings``.
    """
    if purpose not in NBD_PURPOSES:
        raise XenApiError('purpose must be one of %s, not %s' % (', '.join(NBD_PURPOSES), purpose))
    ref, record = find_network(client, network)
    before = list(record.get('purpose') or [])
    warnings = []
    changed = (purpose not in before) if present else (purpose in before)
    after = list(before)
    if changed and present:
        if record.get('managed') is False:
            raise XenApiError('cannot add purpose %s to %s: XenServer does not manage this network'
                              % (purpose, _label(record)), code='NETWORK_UNMANAGED', params=[ref])
        # xapi checks every network of the pool (this one included) for the other NBD purpose.
        conflicting = other_purpose(purpose)
        holders = holders_of(client, conflicting)
        if holders:
            raise incompatible_error(record, purpose, conflicting, holders)
        after.insert(0, purpose)  # xapi prepends the new purpose
        if not check_mode:
            try:
                _call(client, 'network.add_purpose', record, ref, purpose)
            except XenApiError as exc:
                if exc.code != 'NETWORK_INCOMPATIBLE_PURPOSES':
                    raise
                conflicting = exc.params[1] if len(exc.params) > 1 else conflicting
                raise incompatible_error(record, purpose, conflicting, holders_of(client, conflicting))
            after = list(client.call('network.get_purpose', ref))
    elif changed:
        after.remove(purpose)
        if not check_mode:
            _call(client, 'network.remove_purpose', record, ref, purpose)
            after = list(client.call('network.get_purpose', ref))

    result_network = describe_network(record)
    result_network['purpose'] = after
    result_network['addresses'] = network_addresses(client, record)
    if present and not result_network['addresses']:
        warnings.append(no_address_warning(record, purpose))
    return {
        'changed': changed,
        'network': result_network,
        'diff': {'before': {'purpose': before}, 'after': {'purpose': after}},
        'warnings': warnings,
    }
