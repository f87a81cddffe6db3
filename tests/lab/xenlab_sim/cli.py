# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""xenlab command line: start, stop, write, path, info, nbd-switch, vm-switch, guest-exec... (and the internal
`serve`)."""

from __future__ import absolute_import, division, print_function

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

__metaclass__ = type

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNITS = {'': 1, 'K': 1 << 10, 'M': 1 << 20, 'G': 1 << 30, 'T': 1 << 40}


def size_arg(text):
    """Sizes like 256M, 1GiB, 65536 (binary units)."""
    value = text.strip().upper()
    for suffix in ('IB', 'B'):
        if value.endswith(suffix) and len(value) > len(suffix):
            value = value[:-len(suffix)]
            break
    unit = value[-1] if value and value[-1] in UNITS else ''
    try:
        size = int(value[:-1] if unit else value) * UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError('not a size: %s' % text) from None
    if size <= 0 or size % 512:
        raise argparse.ArgumentTypeError('size must be a positive multiple of 512: %s' % text)
    return size


def hosts_arg(text):
    from .inventory import MAX_HOSTS  # pylint: disable=import-outside-toplevel
    value = int(text)
    if not 1 <= value <= MAX_HOSTS:
        raise argparse.ArgumentTypeError('--hosts takes 1 to %d' % MAX_HOSTS)
    return value


def extra_vms_arg(text):
    from .inventory import MAX_EXTRA_VMS  # pylint: disable=import-outside-toplevel
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError('not a number: %s' % text) from None
    if not 0 <= count <= MAX_EXTRA_VMS:
        raise argparse.ArgumentTypeError('must be 0..%d: %s' % (MAX_EXTRA_VMS, text))
    return count


def seconds_arg(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError('not a number of seconds: %s' % text) from None
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError('must be 0..3600 seconds: %s' % text)
    return value


def pool_name_arg(text):
    if not text.strip():
        raise argparse.ArgumentTypeError('the pool name must not be empty')
    return text


def vm_tags_arg(text):
    """NAME=TAG[,TAG...] -> (NAME, [TAG, ...])."""
    name, sep, tags = text.partition('=')
    name = name.strip()
    tags = [t.strip() for t in tags.split(',')]
    if not sep or not name or not all(tags):
        raise argparse.ArgumentTypeError('expected NAME=TAG[,TAG...] with non-empty names and tags: %s' % text)
    return name, tags


def check_vm_tags(opts):
    """Every --vm-tags NAME must be a seeded VM (checked before anything is started)."""
    from .inventory import vm_names  # pylint: disable=import-outside-toplevel
    known = vm_names(opts.extra_vms, opts.hosts)
    unknown = sorted(set(name for name, _tags in opts.vm_tags or ()) - set(known))
    if unknown:
        raise SystemExit('xenlab: --vm-tags: no seeded VM named %s (seeded: %s)'
                         % (', '.join(repr(n) for n in unknown), ', '.join(known)))


def lab_file(directory):
    return os.path.join(os.path.abspath(directory), 'lab.json')


def read_lab(directory):
    try:
        with open(lab_file(directory)) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        raise SystemExit('xenlab: no lab in %s (lab.json missing)' % directory) from None


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open('/proc/%d/stat' % pid) as handle:
            return handle.read().split(') ')[-1][:1] != 'Z'
    except OSError:
        return False


def ours(pid, directory):
    """Only signal a PID whose command line still names this lab (guards against PID reuse)."""
    try:
        with open('/proc/%d/cmdline' % pid, 'rb') as handle:
            cmdline = handle.read().decode('utf-8', 'replace')
    except OSError:
        return False
    return os.path.abspath(directory) in cmdline


# ----- start / stop ------------------------------------------------------------------------------

def cmd_start(opts):
    check_vm_tags(opts)
    directory = os.path.abspath(opts.dir)
    os.makedirs(directory, exist_ok=True)
    path = lab_file(directory)
    if os.path.exists(path):
        old = read_lab(directory)
        if any(pid_alive(p) and ours(p, directory) for p in old.get('pids', [])):
            raise SystemExit('xenlab: a lab is already running in %s' % directory)
        os.unlink(path)
        # A stopped lab's disks and certificates belong to a pool that no longer exists.
        for stale in ('sr', 'pki', 'hosts'):
            shutil.rmtree(os.path.join(directory, stale), ignore_errors=True)
    cmd = [sys.executable, '-m', 'xenlab_sim.cli', 'serve'] + serve_args(opts, directory)
    # The password goes through the environment, not argv (visible to every user in ps).
    env = dict(os.environ, PYTHONPATH=HERE + os.pathsep + os.environ.get('PYTHONPATH', ''),
               XENLAB_PASSWORD=opts.password or secrets.token_urlsafe(12))
    with open(os.path.join(directory, 'lab.log'), 'ab') as log:
        # A new session (setsid) so the lab outlives this command and its terminal.
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                cwd=directory, start_new_session=True, close_fds=True)
    deadline = time.monotonic() + opts.timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit('xenlab: the lab exited (%s); see %s' % (proc.returncode, os.path.join(directory, 'lab.log')))
        if os.path.exists(path):
            info = read_lab(directory)
            if info.get('state') == 'running' and proc.pid in info.get('pids', []):
                print(json.dumps(info, indent=2, sort_keys=True))
                return 0
        time.sleep(0.05)
    proc.terminate()
    raise SystemExit('xenlab: the lab did not become ready in %ss' % opts.timeout)


def serve_args(opts, directory):
    args = ['--dir', directory, '--username=' + opts.username,
            '--tls-policy', opts.tls_policy, '--nbd-purpose', opts.nbd_purpose,
            '--disk0-size', str(opts.disk0_size), '--disk1-size', str(opts.disk1_size),
            '--other-disk-size', str(opts.other_disk_size), '--auth-failure-delay', str(opts.auth_failure_delay),
            '--api-port', str(opts.api_port), '--nbd-port', str(opts.nbd_port),
            '--extra-vms', str(opts.extra_vms), '--extra-vm-disk-size', str(opts.extra_vm_disk_size),
            '--hosts', str(opts.hosts), '--pool-name=' + opts.pool_name,
            '--guest-boot-seconds', str(opts.guest_boot_seconds)]
    # One NAME=TAG,TAG argument each, attached with '=' so a value starting with '-' stays a value.
    args.extend('--vm-tags=%s=%s' % (name, ','.join(tags)) for name, tags in opts.vm_tags or ())
    if opts.ca_signed:
        args.append('--ca-signed')
    return args


def cmd_stop(opts):
    directory = os.path.abspath(opts.dir)
    if not os.path.exists(lab_file(directory)):
        print('xenlab: nothing to stop in %s' % directory)
        return 0
    pids = [p for p in read_lab(directory).get('pids', []) if pid_alive(p) and ours(p, directory)]
    # The simulator (first PID) stops its nbdkit itself; the rest are then only stragglers.
    for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        for pid in pids:
            if pid_alive(pid):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
            time.sleep(0.05)
        pids = [p for p in pids if pid_alive(p)]
        if not pids:
            break
    if pids:
        raise SystemExit('xenlab: processes still alive: %s' % pids)
    print('xenlab: stopped lab in %s' % directory)
    return 0


# ----- write / path / info -----------------------------------------------------------------------

def control(directory, endpoint, payload):
    info = read_lab(directory)
    request = urllib.request.Request(info['control_url'] + endpoint, data=json.dumps(payload).encode('utf-8'),
                                     headers={'Content-Type': 'application/json',
                                              'X-Xenlab-Secret': info['control_secret']})
    try:
        # No proxies: the endpoint is on 127.0.0.1 whatever http_proxy says.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=120) as response:
            reply = json.loads(response.read().decode('utf-8'))
    except OSError as err:
        raise SystemExit('xenlab: the lab in %s does not answer: %s' % (directory, err)) from err
    if not reply.get('ok'):
        raise SystemExit('xenlab: %s' % reply.get('error'))
    return reply


def cmd_write(opts):
    reply = control(opts.dir, '/internal/write', {'vdi': opts.vdi, 'offset': opts.offset, 'length': opts.length,
                                                  'seed': opts.seed, 'broken_boot_sector': opts.broken_boot_sector,
                                                  'guest_key': opts.guest_key})
    reply.pop('ok', None)
    print(json.dumps(reply, sort_keys=True))
    return 0


def cmd_path(opts):
    print(control(opts.dir, '/internal/path', {'vdi': opts.vdi})['path'])
    return 0


def cmd_nbd_switch(opts):
    args = {'host': opts.host, 'switch': opts.switch}
    if opts.times is not None:
        args['times'] = opts.times
    print(json.dumps(control(opts.dir, '/internal/nbd/switch', args), sort_keys=True))
    return 0


def cmd_nbd_counts(opts):
    reply = control(opts.dir, '/internal/nbd/counts', {'reset': opts.reset})
    reply.pop('ok', None)
    print(json.dumps(reply, sort_keys=True))
    return 0


def cmd_vm_switch(opts):
    print(json.dumps(control(opts.dir, '/internal/vm/switch', {'vm': opts.vm, 'boot': opts.boot}), sort_keys=True))
    return 0


def rfc3339_now():
    return time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())


def cmd_guest_exec(opts):
    """Run a command "in" a VM's guest: here, with the VM named in the environment; log it; pass its status on."""
    argv = list(opts.argv)
    if argv[:1] == ['--']:
        argv = argv[1:]
    if not argv:
        raise SystemExit('xenlab: guest-exec needs a command after --')
    directory = os.path.abspath(opts.dir)
    vm = control(directory, '/internal/vm/info', {'vm': opts.vm})
    env = dict(os.environ, XENLAB_VM_UUID=vm['uuid'], XENLAB_VM_NAME=vm['vm'], XENLAB_DIR=directory)
    began = rfc3339_now()
    try:
        status = subprocess.call(argv, env=env)
    except OSError as err:
        print('xenlab: guest-exec: %s: %s' % (argv[0], err.strerror), file=sys.stderr)
        status = 127 if isinstance(err, FileNotFoundError) else 126
    if status < 0:  # killed by a signal: what a shell reports
        status = 128 - status
    line = json.dumps({'time': began, 'vm': vm['vm'], 'vm_uuid': vm['uuid'], 'argv': argv, 'exit_code': status},
                      sort_keys=True) + '\n'
    fd = os.open(os.path.join(directory, 'guest-exec.log'), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode('utf-8'))  # one write: lines of concurrent guest-execs do not interleave
    finally:
        os.close(fd)
    return status


def cmd_sessions(opts):
    reply = control(opts.dir, '/internal/sessions', {})
    print(json.dumps(reply['sessions'], sort_keys=True))
    return 0


def cmd_info(opts):
    print(json.dumps(read_lab(opts.dir), indent=2, sort_keys=True))
    return 0


def cmd_serve(opts):
    from .server import serve  # pylint: disable=import-outside-toplevel
    opts.password = os.environ.pop('XENLAB_PASSWORD', '') or opts.password or secrets.token_urlsafe(12)
    serve(opts)
    return 0


# ----- argument parsing --------------------------------------------------------------------------

def add_start_options(parser, internal=False):
    parser.add_argument('--api-port', type=int, default=0, help='XenAPI HTTPS port (default: a free one)')
    parser.add_argument('--nbd-port', type=int, default=0, help='NBD front port (default: a free one)')
    parser.add_argument('--tls-policy', choices=('current', 'legacy'), default='current',
                        help='cipher policy of the NBD front (see docs/lab.md)')
    parser.add_argument('--ca-signed', action='store_true', help='host certificate signed by a lab CA')
    parser.add_argument('--username', default='root')
    parser.add_argument('--password', default=None if not internal else '', help='default: random, see lab.json')
    parser.add_argument('--nbd-purpose', choices=('none', 'nbd', 'insecure_nbd'), default='none',
                        help='purpose given to backup-net at start (a fresh host has none)')
    parser.add_argument('--disk0-size', type=size_arg, default=256 << 20)
    parser.add_argument('--disk1-size', type=size_arg, default=64 << 20)
    parser.add_argument('--other-disk-size', type=size_arg, default=64 << 20)
    parser.add_argument('--auth-failure-delay', type=float, default=5.0,
                        help='seconds a failed login waits, like xapi (default 5)')
    parser.add_argument('--extra-vms', type=extra_vms_arg, default=0, metavar='N',
                        help='also seed N running VMs lab-vm-01 .. lab-vm-NN with one disk each (default 0)')
    parser.add_argument('--extra-vm-disk-size', type=size_arg, default=16 << 20, metavar='SIZE',
                        help='size of each lab-vm-NN-disk0 (default 16M)')
    parser.add_argument('--vm-tags', type=vm_tags_arg, action='append', default=[], metavar='NAME=TAG[,TAG]',
                        help='tags of a seeded VM at start (repeatable)')
    parser.add_argument('--hosts', type=hosts_arg, default=1, metavar='N',
                        help='a pool of N hosts on a shared SR, each with its own NBD front (default 1)')
    parser.add_argument('--pool-name', type=pool_name_arg, default='lab-pool', metavar='NAME',
                        help="the pool's name_label (default lab-pool); run a second lab for a second pool")
    parser.add_argument('--guest-boot-seconds', type=seconds_arg, default=2.0, metavar='S',
                        help="how long after VM.start a VM's guest agent reports (VM_guest_metrics; default 2)")


def parser():
    top = argparse.ArgumentParser(prog='xenlab', description='XenServer lab: XenAPI simulator with an NBD front')
    sub = top.add_subparsers(dest='command', required=True, metavar='COMMAND')
    start = sub.add_parser('start', help='start a lab in the background')
    start.add_argument('--dir', required=True)
    start.add_argument('--timeout', type=float, default=60.0)
    add_start_options(start)
    start.set_defaults(func=cmd_start)
    stop = sub.add_parser('stop', help='stop everything the lab started')
    stop.add_argument('--dir', required=True)
    stop.set_defaults(func=cmd_stop)
    write = sub.add_parser('write', help='simulate a guest write (marks the CBT log)')
    write.add_argument('--dir', required=True)
    write.add_argument('--vdi', required=True, help='VDI uuid')
    write.add_argument('--offset', type=int, default=0)
    write.add_argument('--length', type=int, default=0)
    write.add_argument('--seed', type=int, default=0)
    write.add_argument('--broken-boot-sector', action='store_true',
                       help='write the bytes that keep a VM booting from this disk from ever booting (at offset 0)')
    write.add_argument('--guest-key', metavar='NAME',
                       help='install a boot script (at offset 0) that writes xenstore control/NAME once the guest is up')
    write.set_defaults(func=cmd_write)
    path = sub.add_parser('path', help="print the file holding a VDI's content")
    path.add_argument('--dir', required=True)
    path.add_argument('--vdi', required=True)
    path.set_defaults(func=cmd_path)
    switch = sub.add_parser('nbd-switch', help="make a host's NBD front serve, refuse or drop connections")
    switch.add_argument('--dir', required=True)
    switch.add_argument('--host', required=True, help='host name (lab-host-N) or uuid')
    switch.add_argument('--switch', required=True, choices=('serve', 'refuse', 'drop'))
    switch.add_argument('--times', type=int, help='with drop: drop this many connections, then serve again')
    switch.set_defaults(func=cmd_nbd_switch)
    counts = sub.add_parser('nbd-counts', help="print each host's open NBD connections and their peak")
    counts.add_argument('--dir', required=True)
    counts.add_argument('--reset', action='store_true', help='start the peaks again from now')
    counts.set_defaults(func=cmd_nbd_counts)
    vm_switch = sub.add_parser('vm-switch', help="make a VM's guest boot normally or never (no guest agent)")
    vm_switch.add_argument('--dir', required=True)
    vm_switch.add_argument('--vm', required=True, help='VM name_label or uuid')
    vm_switch.add_argument('--boot', required=True, choices=('normal', 'never'),
                           help='never: the VM runs but its guest agent never reports')
    vm_switch.set_defaults(func=cmd_vm_switch)
    guest_exec = sub.add_parser('guest-exec', help="run a command as a VM's guest (locally; logged)",
                                usage='xenlab guest-exec --dir DIR --vm VM -- CMD [ARG ...]')
    guest_exec.add_argument('--dir', required=True)
    guest_exec.add_argument('--vm', required=True, help='VM name_label or uuid')
    guest_exec.add_argument('argv', nargs=argparse.REMAINDER, metavar='-- CMD [ARG ...]',
                            help='runs with XENLAB_VM_UUID, XENLAB_VM_NAME, XENLAB_DIR set; exits with its status')
    guest_exec.set_defaults(func=cmd_guest_exec)
    sessions = sub.add_parser('sessions', help='print the sessions logged in now (originator and user)')
    sessions.add_argument('--dir', required=True)
    sessions.set_defaults(func=cmd_sessions)
    info = sub.add_parser('info', help='print lab.json')
    info.add_argument('--dir', required=True)
    info.set_defaults(func=cmd_info)
    serve = sub.add_parser('serve')  # internal: what `start` runs in the background (not listed)
    serve.add_argument('--dir', required=True)
    add_start_options(serve, internal=True)
    serve.set_defaults(func=cmd_serve)
    return top


def main(argv=None):
    opts = parser().parse_args(argv)
    return opts.func(opts)


if __name__ == '__main__':
    sys.exit(main())
