# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Field names and defaults of the XenAPI classes the lab serves, in datamodel order.

Only the fields a backup tool plausibly reads are listed; each record is built from these
defaults so get_record always returns every field, like xapi does.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

NULL_REF = 'OpaqueRef:NULL'
# xapi's "never" datetime, sent for unset dates (e.g. task.finished of a pending task).
NEVER = '19700101T00:00:00Z'

SCHEMA = {
    'session': [
        ('uuid', ''), ('this_host', NULL_REF), ('this_user', NULL_REF), ('last_active', NEVER),
        ('pool', False), ('other_config', {}), ('is_local_superuser', True), ('subject', NULL_REF),
        ('validation_time', NEVER), ('auth_user_sid', ''), ('auth_user_name', ''), ('rbac_permissions', []),
        ('tasks', []), ('parent', NULL_REF), ('originator', ''), ('client_certificate', False),
    ],
    'pool': [
        ('uuid', ''), ('name_label', ''), ('name_description', ''), ('master', NULL_REF),
        ('default_SR', NULL_REF), ('suspend_image_SR', NULL_REF), ('crash_dump_SR', NULL_REF),
        ('other_config', {}), ('ha_enabled', False), ('tags', []), ('restrictions', {}),
        ('cpu_info', {}), ('tls_verification_enabled', False),
    ],
    'host': [
        ('uuid', ''), ('name_label', ''), ('name_description', ''), ('memory_overhead', 0),
        ('allowed_operations', []), ('current_operations', {}), ('API_version_major', 2),
        ('API_version_minor', 21), ('API_version_vendor', 'XenSource'), ('API_version_vendor_implementation', {}),
        ('enabled', True), ('software_version', {}), ('other_config', {}), ('capabilities', []),
        ('cpu_configuration', {}), ('sched_policy', 'credit'), ('supported_bootloaders', ['pygrub', 'eliloader']),
        ('resident_VMs', []), ('logging', {}), ('PIFs', []), ('suspend_image_sr', NULL_REF),
        ('crash_dump_sr', NULL_REF), ('crashdumps', []), ('patches', []), ('updates', []), ('PBDs', []),
        ('host_CPUs', []), ('cpu_info', {}), ('hostname', ''), ('address', ''), ('metrics', NULL_REF),
        ('license_params', {}), ('ha_statefiles', []), ('ha_network_peers', []), ('blobs', {}), ('tags', []),
        ('external_auth_type', ''), ('external_auth_service_name', ''), ('external_auth_configuration', {}),
        ('edition', 'xcp-ng'), ('license_server', {}), ('bios_strings', {}), ('power_on_mode', ''),
        ('power_on_config', {}), ('local_cache_sr', NULL_REF), ('chipset_info', {}), ('PCIs', []), ('PGPUs', []),
        ('PUSBs', []), ('ssl_legacy', False), ('guest_VCPUs_params', {}), ('display', 'enabled'),
        ('virtual_hardware_platform_versions', [0, 1, 2]), ('control_domain', NULL_REF),
        ('updates_requiring_reboot', []), ('features', []), ('iscsi_iqn', ''), ('multipathing', False),
        ('uefi_certificates', ''), ('certificates', []), ('editions', []), ('https_only', False),
    ],
    'network': [
        ('uuid', ''), ('name_label', ''), ('name_description', ''), ('allowed_operations', []),
        ('current_operations', {}), ('VIFs', []), ('PIFs', []), ('MTU', 1500), ('other_config', {}),
        ('bridge', ''), ('managed', True), ('blobs', {}), ('tags', []), ('default_locking_mode', 'unlocked'),
        ('assigned_ips', {}), ('purpose', []),
    ],
    'PIF': [
        ('uuid', ''), ('device', ''), ('network', NULL_REF), ('host', NULL_REF), ('MAC', ''), ('MTU', 1500),
        ('VLAN', -1), ('device_name', ''), ('metrics', NULL_REF), ('physical', True), ('currently_attached', True),
        ('ip_configuration_mode', 'Static'), ('IP', ''), ('netmask', ''), ('gateway', ''), ('DNS', ''),
        ('bond_slave_of', NULL_REF), ('bond_master_of', []), ('VLAN_master_of', NULL_REF), ('VLAN_slave_of', []),
        ('management', False), ('other_config', {}), ('disallow_unplug', False), ('tunnel_access_PIF_of', []),
        ('tunnel_transport_PIF_of', []), ('ipv6_configuration_mode', 'None'), ('IPv6', []), ('ipv6_gateway', ''),
        ('primary_address_type', 'IPv4'), ('managed', True), ('properties', {}), ('capabilities', []),
        ('igmp_snooping_status', 'unknown'), ('sriov_physical_PIF_of', []), ('sriov_logical_PIF_of', []),
        ('PCI', NULL_REF),
    ],
    'SR': [
        ('uuid', ''), ('name_label', ''), ('name_description', ''), ('allowed_operations', []),
        ('current_operations', {}), ('VDIs', []), ('PBDs', []), ('virtual_allocation', 0),
        ('physical_utilisation', 0), ('physical_size', 0), ('type', ''), ('content_type', ''), ('shared', False),
        ('other_config', {}), ('tags', []), ('default_vdi_visibility', True), ('sm_config', {}), ('blobs', {}),
        ('local_cache_enabled', False), ('introduced_by', NULL_REF), ('clustered', False), ('is_tools_sr', False),
    ],
    'PBD': [
        ('uuid', ''), ('host', NULL_REF), ('SR', NULL_REF), ('device_config', {}), ('currently_attached', True),
        ('other_config', {}),
    ],
    'VDI': [
        ('uuid', ''), ('name_label', ''), ('name_description', ''), ('allowed_operations', []),
        ('current_operations', {}), ('SR', NULL_REF), ('VBDs', []), ('crash_dumps', []), ('virtual_size', 0),
        ('physical_utilisation', 0), ('type', 'user'), ('sharable', False), ('read_only', False),
        ('other_config', {}), ('storage_lock', False), ('location', ''), ('managed', True), ('missing', False),
        ('parent', NULL_REF), ('xenstore_data', {}), ('sm_config', {}), ('is_a_snapshot', False),
        ('snapshot_of', NULL_REF), ('snapshots', []), ('snapshot_time', NEVER), ('tags', []),
        ('allow_caching', False), ('on_boot', 'persist'), ('metadata_of_pool', NULL_REF),
        ('metadata_latest', False), ('is_tools_iso', False), ('cbt_enabled', False),
    ],
    'VBD': [
        ('uuid', ''), ('allowed_operations', []), ('current_operations', {}), ('VM', NULL_REF), ('VDI', NULL_REF),
        ('device', ''), ('userdevice', ''), ('bootable', False), ('mode', 'RW'), ('type', 'Disk'),
        ('unpluggable', True), ('storage_lock', False), ('empty', False), ('other_config', {}),
        ('currently_attached', False), ('status_code', 0), ('status_detail', ''), ('runtime_properties', {}),
        ('qos_algorithm_type', ''), ('qos_algorithm_params', {}), ('qos_supported_algorithms', []),
        ('metrics', NULL_REF),
    ],
    'VM': [
        ('uuid', ''), ('allowed_operations', []), ('current_operations', {}), ('name_label', ''),
        ('name_description', ''), ('power_state', 'Halted'), ('user_version', 1), ('is_a_template', False),
        ('is_default_template', False), ('suspend_VDI', NULL_REF), ('resident_on', NULL_REF),
        ('scheduled_to_be_resident_on', NULL_REF), ('affinity', NULL_REF), ('memory_overhead', 0),
        ('memory_target', 0), ('memory_static_max', 1073741824), ('memory_dynamic_max', 1073741824),
        ('memory_dynamic_min', 1073741824), ('memory_static_min', 1073741824), ('VCPUs_params', {}),
        ('VCPUs_max', 1), ('VCPUs_at_startup', 1), ('actions_after_shutdown', 'destroy'),
        ('actions_after_reboot', 'restart'), ('actions_after_crash', 'restart'), ('consoles', []), ('VIFs', []),
        ('VBDs', []), ('VUSBs', []), ('crash_dumps', []), ('VTPMs', []), ('PV_bootloader', ''), ('PV_kernel', ''),
        ('PV_ramdisk', ''), ('PV_args', ''), ('PV_bootloader_args', ''), ('PV_legacy_args', ''),
        ('HVM_boot_policy', 'BIOS order'), ('HVM_boot_params', {'order': 'cd'}), ('HVM_shadow_multiplier', 1.0),
        ('platform', {}), ('PCI_bus', ''), ('other_config', {}), ('domid', -1), ('domarch', ''),
        ('last_boot_CPU_flags', {}), ('is_control_domain', False), ('metrics', NULL_REF),
        ('guest_metrics', NULL_REF), ('last_booted_record', ''), ('recommendations', ''), ('xenstore_data', {}),
        ('ha_always_run', False), ('ha_restart_priority', ''), ('is_a_snapshot', False),
        ('snapshot_of', NULL_REF), ('snapshots', []), ('snapshot_time', NEVER), ('transportable_snapshot_id', ''),
        ('blobs', {}), ('tags', []), ('blocked_operations', {}), ('snapshot_info', {}), ('snapshot_metadata', ''),
        ('parent', NULL_REF), ('children', []), ('bios_strings', {}), ('protection_policy', NULL_REF),
        ('is_snapshot_from_vmpp', False), ('snapshot_schedule', NULL_REF), ('is_vmss_snapshot', False),
        ('appliance', NULL_REF), ('start_delay', 0), ('shutdown_delay', 0), ('order', 0), ('VGPUs', []),
        ('attached_PCIs', []), ('suspend_SR', NULL_REF), ('version', 0), ('generation_id', ''),
        ('hardware_platform_version', 0), ('has_vendor_device', False), ('requires_reboot', False),
        ('reference_label', ''), ('domain_type', 'hvm'), ('NVRAM', {}), ('pending_guidances', []),
    ],
    'VIF': [
        ('uuid', ''), ('allowed_operations', []), ('current_operations', {}), ('device', ''), ('network', NULL_REF),
        ('VM', NULL_REF), ('MAC', ''), ('MTU', 1500), ('other_config', {}), ('currently_attached', False),
        ('status_code', 0), ('status_detail', ''), ('runtime_properties', {}), ('qos_algorithm_type', ''),
        ('qos_algorithm_params', {}), ('qos_supported_algorithms', []), ('metrics', NULL_REF),
        ('MAC_autogenerated', False), ('locking_mode', 'network_default'), ('ipv4_allowed', []), ('ipv6_allowed', []),
        ('ipv4_configuration_mode', 'None'), ('ipv4_addresses', []), ('ipv4_gateway', ''),
        ('ipv6_configuration_mode', 'None'), ('ipv6_addresses', []), ('ipv6_gateway', ''),
    ],
    'VM_metrics': [
        ('uuid', ''), ('memory_actual', 0), ('VCPUs_number', 0), ('VCPUs_utilisation', {}), ('VCPUs_CPU', {}),
        ('VCPUs_params', {}), ('VCPUs_flags', {}), ('state', []), ('start_time', NEVER), ('install_time', NEVER),
        ('last_updated', NEVER), ('other_config', {}), ('hvm', False), ('nested_virt', False), ('nomigrate', False),
        ('current_domain_type', 'unspecified'),
    ],
    'VM_guest_metrics': [
        ('uuid', ''), ('os_version', {}), ('PV_drivers_version', {}), ('PV_drivers_up_to_date', False),
        ('memory', {}), ('disks', {}), ('networks', {}), ('other', {}), ('last_updated', NEVER),
        ('other_config', {}), ('live', False), ('can_use_hotplug_vbd', 'unspecified'),
        ('can_use_hotplug_vif', 'unspecified'), ('PV_drivers_detected', False),
    ],
    'task': [
        ('uuid', ''), ('name_label', ''), ('name_description', ''), ('allowed_operations', []),
        ('current_operations', {}), ('created', NEVER), ('finished', NEVER), ('status', 'pending'),
        ('resident_on', NULL_REF), ('progress', 0.0), ('type', ''), ('result', ''), ('error_info', []),
        ('other_config', {}), ('subtask_of', NULL_REF), ('subtasks', []), ('backtrace', '()'),
    ],
    'message': [
        ('uuid', ''), ('name', ''), ('priority', 0), ('cls', 'VM'), ('obj_uuid', ''), ('timestamp', NEVER),
        ('body', ''),
    ],
}

# Fields whose value xapi derives from other tables ("inverse" set fields); the store fills
# them in when a record is read so they can never go stale.
#   (class, field): (other class, field in other class pointing back)
INVERSE_FIELDS = {
    ('host', 'PIFs'): ('PIF', 'host'),
    ('host', 'PBDs'): ('PBD', 'host'),
    ('host', 'resident_VMs'): ('VM', 'resident_on'),
    ('network', 'PIFs'): ('PIF', 'network'),
    ('network', 'VIFs'): ('VIF', 'network'),
    ('SR', 'VDIs'): ('VDI', 'SR'),
    ('SR', 'PBDs'): ('PBD', 'SR'),
    ('VDI', 'VBDs'): ('VBD', 'VDI'),
    ('VDI', 'snapshots'): ('VDI', 'snapshot_of'),
    ('VM', 'VBDs'): ('VBD', 'VM'),
    ('VM', 'VIFs'): ('VIF', 'VM'),
    ('VM', 'snapshots'): ('VM', 'snapshot_of'),
    ('task', 'subtasks'): ('task', 'subtask_of'),
}

# Fields that generic setters (set_<field>, add_to_<field>, remove_from_<field>, add_<x>/remove_<x>)
# may change; everything else is read-only through the API, as in the datamodel.
SETTABLE = {'name_label', 'name_description', 'other_config', 'tags', 'xenstore_data', 'sm_config'}

# More RW fields with generic setters (and add_to_/remove_from_ for maps), per class, as in the datamodel. Their
# values are type-checked against the field's default. VM fields whose setters check the power state or other
# fields (VCPUs, memory, actions, domain_type, HVM_boot_policy) have their own calls in xapi_vm.py.
CLASS_SETTABLE = {
    'VM': {'user_version', 'VCPUs_params', 'PV_bootloader', 'PV_kernel', 'PV_ramdisk', 'PV_args',
           'PV_bootloader_args', 'PV_legacy_args', 'HVM_boot_params', 'platform', 'PCI_bus', 'recommendations',
           'NVRAM', 'blocked_operations'},
    'VIF': {'qos_algorithm_type', 'qos_algorithm_params'},
}
