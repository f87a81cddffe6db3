# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# Note that this doc fragment is **PRIVATE** to the collection. It can have breaking changes at any time.

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment:
    """Connection options of every module that talks to the XenAPI."""

    DOCUMENTATION = r'''
attributes:
  action_group:
    description:
      - Use C(group/xenserver.cbt_backup.xenserver) in C(module_defaults) to set the connection options once.
      - C(group/xenserver.cbt_backup.all) is the same group under its earlier name.
    support: full
    membership:
      - xenserver.cbt_backup.xenserver
      - xenserver.cbt_backup.all
options:
  hostname:
    description:
      - The pool coordinator, or any pool member (C(HOST_IS_SLAVE) is followed to the coordinator).
      - C(https://) is assumed when no scheme is given.
      - If not set, the value of the E(XENSERVER_HOST) environment variable is used; one of the two is required.
    type: str
    aliases: [host, pool]
  username:
    description:
      - User to log in as. Not needed with O(session_id).
      - If not set, the value of the E(XENSERVER_USER) environment variable is used.
    type: str
    aliases: [user, admin]
  password:
    description:
      - Password of O(username). Never shown in results or logs.
      - If not set, the value of the E(XENSERVER_PASSWORD) environment variable is used.
    type: str
    aliases: [pass, pwd]
  session_id:
    description:
      - An existing session (from M(xenserver.cbt_backup.session)) to use instead of logging in.
      - Export names from C(VDI.get_nbd_info) stay valid only while their session is logged in, so a play that
        passes them between tasks shares one session this way.
    type: str
  validate_certs:
    description:
      - Verify the TLS certificate of the XenAPI endpoint.
      - Hosts ship with a self-signed certificate; put it (or the CA that signed the replacement) in O(ca_path)
        rather than turning this off.
      - If not set, the value of the E(XENSERVER_VALIDATE_CERTS) environment variable is used.
    type: bool
    default: true
  ca_path:
    description: PEM file with the CA certificates (or the host's self-signed certificate) to verify the XenAPI endpoint.
    type: path
  api_timeout:
    description: Seconds to wait for an answer from the XenAPI.
    type: float
    default: 60
'''
