# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What to do about an NBD failure, in XenServer's terms and the modules' options.

Note that this module_util is **PRIVATE** to the collection. It can have breaking changes at any time.

The NBD client (``_nbd``) says what happened in NBD terms and names the situation (``NbdError.situation``);
the remedy depends on the caller, so it lives here, next to the options it names. ``fail`` appends it.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

_SESSION = ('the export name is valid only while the XenAPI session that called VDI.get_nbd_info is logged in '
            '(give session_id of a session task that outlives the export)')

NBD_ADVICE = {
    'export_refused_plain': 'On XenServer, %s, and a network with purpose "nbd" requires TLS (tls: true).' % _SESSION,
    'export_refused_tls': 'On XenServer, a cbt_metadata snapshot cannot be exported, and %s.' % _SESSION,
    'starttls_policy': ('On XenServer this means the network has purpose "insecure_nbd" (VDI.get_nbd_info still '
                        'returns cert and subject for such networks). Give the network purpose "nbd" to keep the '
                        'export encrypted, or set tls: false to accept an unencrypted export.'),
    'starttls_refused': 'With tls: true the export is read encrypted or not at all.',
    'handshake_slow': 'Raise timeout if the link is known to be this slow.',
    'reply_slow': ('If the link is this slow, raise timeout, or lower min_rate_mib_s where the module has it '
                   '(vdi_export; 0 turns this bound off).'),
    'certificate_mismatch': ('The pinned certificate is the one VDI.get_nbd_info returned: either the host '
                             'certificate was replaced after get_nbd_info was called (call it again), or this is '
                             'not the host you expect.'),
    'nothing_to_verify': 'Give the connection the "cert" that VDI.get_nbd_info returns, or a CA bundle.',
}


def with_advice(message, situation):
    """``message`` followed by the advice for ``situation`` (unchanged when there is none)."""
    advice = NBD_ADVICE.get(situation or '')
    return '%s %s' % (message, advice) if advice else message
