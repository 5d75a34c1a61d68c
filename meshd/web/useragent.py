"""Browser and operating system of a login, for the login events (msgid 107-110).

MeshCentral puts ``[ip, browser, os]`` in a login event's ``msgArgs``, with browser and
OS written ``Name/version`` (e.g. ``Chrome/120.0.0.0``, ``Windows/10``) or ``Unknown``;
its web app and the logins report show them.  This reads the same out of a
``User-Agent`` header and, when the browser sends them, the client hints
``Sec-CH-UA-Platform`` / ``Sec-CH-UA-Platform-Version`` (which name the real Windows
version: user agents stay at "Windows NT 10.0" on Windows 11).
"""

from __future__ import annotations

import re
from typing import Optional

UNKNOWN = "Unknown"

#: (name shown, pattern whose group 1 is the version), first match wins: the order
#: matters because most browsers also claim to be Chrome, Safari and Mozilla.
_BROWSERS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern)) for name, pattern in (
        ("Edge", r"\bEdg(?:e|A|iOS)?/([\d.]+)"),
        ("Opera", r"\bOPR/([\d.]+)"),
        ("Samsung Browser", r"\bSamsungBrowser/([\d.]+)"),
        ("Vivaldi", r"\bVivaldi/([\d.]+)"),
        ("Firefox", r"\b(?:Firefox|FxiOS)/([\d.]+)"),
        ("Chromium", r"\bChromium/([\d.]+)"),
        ("Chrome Headless", r"\bHeadlessChrome/([\d.]+)"),
        ("Chrome", r"\b(?:Chrome|CriOS)/([\d.]+)"),
        ("Mobile Safari", r"\bVersion/([\d.]+).*\bMobile/\S+ Safari/"),
        ("Safari", r"\bVersion/([\d.]+).*\bSafari/"),
        ("curl", r"\bcurl/([\d.]+)"),
        ("Node.js", r"\bnode(?:\.js)?/v?([\d.]+)"),
        ("Python", r"\bPython(?:-urllib)?/([\d.]+)"),
    ))

_WINDOWS_NT = {"10.0": "10", "6.3": "8.1", "6.2": "8", "6.1": "7", "6.0": "Vista",
               "5.2": "XP", "5.1": "XP"}


def _os_from_agent(agent: str) -> tuple[str, Optional[str]]:
    windows = re.search(r"Windows NT ([\d.]+)", agent)
    if windows:
        return "Windows", _WINDOWS_NT.get(windows.group(1), windows.group(1))
    ios = re.search(r"(?:iPhone|iPad|iPod).*? OS ([\d_]+)", agent)
    if ios:
        return "iOS", ios.group(1).replace("_", ".")
    android = re.search(r"Android ([\d.]+)", agent)
    if android:
        return "Android", android.group(1)
    if "Android" in agent:
        return "Android", None
    if "CrOS" in agent:
        return "Chromium OS", None
    mac = re.search(r"Mac OS X ([\d_.]+)", agent)
    if mac:
        return "Mac OS", mac.group(1).replace("_", ".")
    for name in ("Ubuntu", "Debian", "Fedora"):
        if name in agent:
            return name, None
    if "Linux" in agent or "X11" in agent:
        return "Linux", None
    return UNKNOWN, None


def _unquote(value: Optional[str]) -> str:
    return (value or "").strip().strip('"').strip()


def describe(user_agent: Optional[str], platform: Optional[str] = None,
             platform_version: Optional[str] = None) -> tuple[str, str]:
    """``(browser, os)`` as MeshCentral writes them in login events."""
    agent = user_agent or ""
    browser = UNKNOWN
    for name, pattern in _BROWSERS:
        found = pattern.search(agent)
        if found:
            browser = f"{name}/{found.group(1)}"
            break
    os_name, os_version = _os_from_agent(agent)
    hinted = _unquote(platform)
    if hinted:
        os_name, os_version = hinted, None
        version = _unquote(platform_version)
        if version:
            # Windows 11 reports platform version 13 or later (Windows 10: 1 to 10).
            major = version.split(".")[0]
            if hinted == "Windows" and major.isdigit() and int(major) >= 13:
                version = "11"
            os_version = version
    return browser, f"{os_name}/{os_version}" if os_version else os_name
