# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where a disk can be read over NBD: VDI.get_nbd_info, annotated with the network behind each address.

Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
Export names carry the caller's session reference: never log or return them outside no_log results.
"""

from __future__ import absolute_import, division, print_function

import hashlib

from ..client import XenApiError

__metaclass__ = type

NBD_PURPOSES = ('nbd', 'insecure_nbd')


def nbd_info(client, vdi_ref):
    """``VDI.get_nbd_info`` with ports as ints and, per address, the NBD network(s) serving it.

    Each element gains ``network_uuids``, ``network_names`` and ``purposes`` (of the NBD networks whose
    attached PIF on a host holds the address).
    """
    infos = client.call('VDI.get_nbd_info', vdi_ref)
    networks = _nbd_networks(client)
    by_address = {}
    for pif in client.call('PIF.get_all_records').values():
        if pif['network'] not in networks or not pif.get('currently_attached', True):
            continue
        for address in [pif.get('IP')] + [a.split('/')[0] for a in pif.get('IPv6') or []]:
            if address:
                by_address.setdefault(address, []).append(networks[pif['network']])
    result = []
    for info in infos:
        entry = dict(info)
        entry['port'] = int(info.get('port') or 10809)
        served_by = by_address.get(info['address'], [])
        entry['network_uuids'] = sorted(set(n['uuid'] for n in served_by))
        entry['network_names'] = sorted(set(n['name_label'] for n in served_by))
        entry['purposes'] = sorted(set(p for n in served_by for p in n['purpose'] if p in NBD_PURPOSES))
        result.append(entry)
    return result


def _nbd_networks(client):
    return dict((ref, record) for ref, record in client.call('network.get_all_records').items()
                if set(record['purpose']) & set(NBD_PURPOSES))


def why_empty(client, vdi_record):
    """Explain an empty get_nbd_info list: which of the three causes applies."""
    networks = _nbd_networks(client)
    if not networks:
        return ('no network of the pool has purpose "nbd" (or "insecure_nbd"), so no host serves NBD; give the backup '
                'network that purpose (xenserver.cbt_backup.nbd_network)')
    attached_hosts = set()
    for pbd_ref in client.call('SR.get_PBDs', vdi_record['SR']):
        pbd = client.call('PBD.get_record', pbd_ref)
        if pbd['currently_attached']:
            attached_hosts.add(pbd['host'])
    if not attached_hosts:
        return 'the storage repository of the disk is not attached (plugged) on any host, so no host can serve it'
    names = ', '.join(sorted(n['name_label'] for n in networks.values()))
    return ('no host that has the disk\'s storage attached has an IP address on an NBD network (%s): give the network '
            'a PIF with an IP address on those hosts' % names)


def on_network(infos, network):
    """The elements served by ``network`` (uuid or name); an error if there is none."""
    chosen = [i for i in infos if network in i['network_uuids'] or network in i['network_names']]
    if not chosen:
        serving = sorted(set(n for i in infos for n in i['network_names']))
        raise XenApiError('no NBD address of the disk is on the network "%s" (NBD networks serving it: %s)'
                          % (network, ', '.join(serving) or 'none'), code='NBD_NETWORK_NOT_FOUND')
    return chosen


def in_order(infos, network=None, key=None):
    """The elements to try, in order: those served by ``network`` when given, rotated by a stable hash of
    ``key`` (the disk's uuid), so that the disks of a run spread over the pool's hosts and a disk is read
    from the same host run after run; the others follow, to fail over to."""
    chosen = sorted(on_network(infos, network) if network else infos, key=lambda i: (i['address'], i['port']))
    if key and len(chosen) > 1:
        start = int(hashlib.sha256(key.encode('utf-8')).hexdigest(), 16) % len(chosen)
        chosen = chosen[start:] + chosen[:start]
    return chosen


def require_nbd_info(client, vdi_ref, vdi_record, network=None):
    """nbd_info() that explains an empty list, narrowed to ``network`` when given."""
    infos = nbd_info(client, vdi_ref)
    if not infos:
        raise XenApiError('VDI.get_nbd_info returned no NBD address for %s: %s'
                          % (vdi_record['name_label'], why_empty(client, vdi_record)), code='NO_NBD_ADDRESS')
    return on_network(infos, network) if network else infos
