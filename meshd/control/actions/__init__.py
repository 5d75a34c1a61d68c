"""The dispatch table of ``/control.ashx``: JSON ``action`` → handler.

Every handler takes a :class:`~meshd.control.session.Call` (the command, the caller
re-read from the store, reply helpers), checks the caller's rights itself and answers
with MeshCentral's shapes and texts.  ``ping``, ``pong`` and ``close`` are handled by
the session before this table.  An action missing here is ignored, as MeshCentral
ignores unknown actions.
"""

from __future__ import annotations

from typing import Any, Callable

from meshd.control.actions import (
    details,
    devices,
    events,
    groups,
    report,
    server,
    sharing,
    twofactor,
    usergroups,
    users,
)

ACTIONS: dict[str, Callable[[Any], Any]] = {
    # users, sessions, login tokens
    "users": users.users,
    "adduser": users.adduser,
    "edituser": users.edituser,
    "deleteuser": users.deleteuser,
    "changepassword": users.changepassword,
    "wssessioncount": users.wssessioncount,
    "userbroadcast": users.userbroadcast,
    "authcookie": users.authcookie,
    "logincookie": server.logincookie,
    "createLoginToken": users.create_login_token,
    "loginTokens": users.login_tokens,
    # second factors (meshd.control.twofactor)
    "otpauth-request": twofactor.otpauth_request,
    "otpauth-setup": twofactor.otpauth_setup,
    "otpauth-clear": twofactor.otpauth_clear,
    "otpauth-getpasswords": twofactor.otpauth_getpasswords,
    "otpauth-enrolcode": twofactor.otpauth_enrolcode,
    # device groups
    "meshes": groups.meshes,
    "createmesh": groups.createmesh,
    "deletemesh": groups.deletemesh,
    "editmesh": groups.editmesh,
    "addmeshuser": groups.addmeshuser,
    "removemeshuser": groups.removemeshuser,
    "createInviteLink": groups.create_invite_link,
    # devices
    "nodes": devices.nodes,
    "addlocaldevice": devices.addlocaldevice,
    "addamtdevice": devices.addamtdevice,
    "changeDeviceMesh": devices.change_device_mesh,
    "changedevice": devices.changedevice,
    "removedevices": devices.removedevices,
    "adddeviceuser": devices.adddeviceuser,
    "getsysinfo": devices.getsysinfo,
    "getnetworkinfo": devices.getnetworkinfo,
    "lastconnect": devices.lastconnect,
    "runcommands": devices.runcommands,
    "msg": devices.msg,
    "toast": devices.toast,
    "poweraction": devices.poweraction,
    "wakedevices": devices.wakedevices,
    "webrelay": devices.webrelay,
    "deviceShares": sharing.device_shares,
    "createDeviceShareLink": sharing.create_device_share_link,
    "removeDeviceShare": sharing.remove_device_share,
    "inviteAgent": devices.invite_agent,
    "getDeviceDetails": details.get_device_details,
    # user groups
    "usergroups": usergroups.usergroups,
    "createusergroup": usergroups.createusergroup,
    "deleteusergroup": usergroups.deleteusergroup,
    "addusertousergroup": usergroups.addusertousergroup,
    "removeuserfromusergroup": usergroups.removeuserfromusergroup,
    # events
    "events": events.events,
    "previousLogins": events.previous_logins,
    "report": report.report,
    # server
    "serverstats": server.serverstats,
}
