"""Export-time customization of an image's tree: users (with groups, keys and a password), time zone,
locale, keymap and extra files from the host.

Everything is written through ImageTree, after checking that the image has what the setting needs (the
zone file, the compiled locale, the groups), so a setting never silently does nothing.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import log
from .errors import UserError
from .imagetree import ImageTree
from .runner import output

_GROUP_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
USER_RE = re.compile(rf"(?P<name>{_GROUP_RE.pattern})(?::(?P<groups>{_GROUP_RE.pattern}(?:,{_GROUP_RE.pattern})*))?")
TIMEZONE_RE = re.compile(r"[A-Za-z0-9_+-]+(?:/[A-Za-z0-9_+-]+)*")
LOCALE_RE = re.compile(r"[A-Za-z]{1,8}(?:_[A-Z]{2})?(?:\.[A-Za-z0-9-]+)?(?:@[a-z]+)?")
KEYMAP_RE = re.compile(r"[a-z0-9_]+(?:-[a-z0-9_]+)*")
_BUILTIN_LOCALES = {"C", "POSIX", "C.UTF-8", "C.utf8"}


@dataclass(frozen=True)
class UserSpec:
    name: str
    groups: tuple[str, ...] = ()
    ssh_key: str | None = None


def parse_user(text: str, *, where: str) -> UserSpec:
    match = USER_RE.fullmatch(text)
    if not match:
        raise UserError(f"{where}: export.user {text!r} is not NAME or NAME:GROUP,GROUP",
                        hint="lower-case letters, digits, '_' and '-', starting with a letter; e.g. alice:sudo,adm")
    groups = tuple(match["groups"].split(",")) if match["groups"] else ()
    return UserSpec(match["name"], groups)


def users_from(options: Any, *, where: str = "command line") -> list[UserSpec]:
    """--user NAME[:GROUPS] each paired with the --ssh-key in the same position."""
    specs = [parse_user(text, where=where) for text in options.user]
    keys = list(options.ssh_key)
    if specs and len(keys) > len(specs):
        raise UserError(f"{where}: {len(keys)} SSH keys for {len(specs)} users",
                        hint="the first --ssh-key goes to the first --user, the second to the second, ...; "
                             "give at most one key per user (or no --user: one key for root)")
    if not specs and len(keys) > 1:
        raise UserError(f"{where}: {len(keys)} SSH keys but no --user: only one key can go to root",
                        hint="give one --ssh-key for root, or a --user for each key")
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise UserError(f"{where}: a user is named twice ({', '.join(names)})", hint="give each --user once")
    return [UserSpec(spec.name, spec.groups, keys[i] if i < len(keys) else None) for i, spec in enumerate(specs)]


def parse_copy(text: str, *, where: str) -> tuple[Path, str]:
    """SRC:DEST -> (host path, absolute path in the image). The last ':' splits, so SRC may contain one."""
    source, sep, dest = text.rpartition(":")
    if not sep or not source or not dest.startswith("/") or dest.rstrip("/") == "":
        raise UserError(f"{where}: export.copy {text!r} is not SRC:DEST",
                        hint="a host file or directory, ':', and an absolute path in the image other than /, "
                             "e.g. files/motd:/etc/motd")
    if ".." in dest.split("/"):
        raise UserError(f"{where}: export.copy {text!r}: DEST may not contain '..'",
                        hint="write the path as the image has it")
    return Path(source), dest


def check_host_files(options: Any) -> None:
    """Every host file an option names exists, before any work is done."""
    for key in options.ssh_key:
        if not Path(key).is_file():
            raise UserError(f"--ssh-key {key}: no such file", hint="give the path of a public key (*.pub)")
    if options.password_file and not Path(options.password_file).is_file():
        raise UserError(f"--password-file {options.password_file}: no such file",
                        hint="give a file whose first line is the password")
    for text in options.copy:
        source, _ = parse_copy(text, where="--copy")
        if not (source.is_file() or source.is_dir()) or source.is_symlink() and not source.exists():
            raise UserError(f"--copy {text}: {source} is not a file or directory on this machine",
                            hint="give an existing host path before the ':'")


def apply(tree: ImageTree, options: Any, epoch: int) -> dict[str, Any]:
    """Apply every customization the options ask for; returns what was done, for the manifest."""
    done: dict[str, Any] = {}
    if options.timezone:
        done["timezone"] = set_timezone(tree, options.timezone, epoch)
    if options.locale:
        done["locale"] = set_locale(tree, options.locale, epoch)
    if options.keymap:
        done["keymap"] = set_keymap(tree, options.keymap, epoch)
    done.update(add_users(tree, options, epoch))
    if options.copy:
        done["copied"] = [copy_into(tree, *parse_copy(text, where="--copy"), epoch) for text in options.copy]
    return done


def summary(options: Any) -> str:
    """', user alice, time zone Europe/Berlin' for an exporter's plan line."""
    parts = [f"user {', '.join(parse_user(u, where='--user').name for u in options.user)}"] if options.user else []
    parts += [f"{label} {value}" for label, value in (("time zone", options.timezone), ("locale", options.locale),
                                                     ("keymap", options.keymap)) if value]
    parts += [f"{len(options.copy)} extra file(s)"] if options.copy else []
    return "".join(f", {part}" for part in parts)


# --- users ---------------------------------------------------------------------------------------------

def _ids(text: str, field: int) -> set[int]:
    return {int(parts[field]) for parts in (line.split(":") for line in text.splitlines())
            if len(parts) > field and parts[field].isdigit()}


def add_user(root: Path | ImageTree, user: str | None, ssh_key: str | None, epoch: int) -> dict[str, Any]:
    """Create `user` (sudo without password, locked password: log in with the SSH key) and/or install
    the key. Edits passwd/shadow/group directly: no chroot, no tools from the image needed. The uid and
    its own group's gid are one number free in both /etc/passwd and /etc/group."""
    tree = root if isinstance(root, ImageTree) else ImageTree(root)
    if not user and not ssh_key:
        return {}
    key = Path(ssh_key).read_text().strip() + "\n" if ssh_key else None
    if key is not None and not re.match(r"^(ssh-|ecdsa-|sk-)", key):
        raise UserError(f"--ssh-key {ssh_key}: not an OpenSSH public key", hint="give the .pub file")
    if not user:
        _authorized_key(tree, "root", 0, 0, key, epoch)
        return {"ssh_key_for": "root"}
    passwd, group = tree.read_text("etc/passwd"), tree.read_text("etc/group")
    if any(line.split(":")[0] == user for line in passwd.splitlines()):
        raise UserError(f"--user {user}: the image already has this user", hint="pick another name")
    if any(line.split(":")[0] == user for line in group.splitlines()):
        raise UserError(f"--user {user}: the image already has a group of this name", hint="pick another name")
    used = _ids(passwd, 2) | _ids(group, 2)
    uid = next(i for i in range(1000, 60000) if i not in used)
    shadow_gid = group_id(tree, "shadow") or 0
    tree.append("etc/passwd", f"{user}:x:{uid}:{uid}::/home/{user}:/bin/bash\n", 0o644, mtime=epoch)
    tree.append("etc/group", f"{user}:x:{uid}:\n", 0o644, mtime=epoch)
    tree.append("etc/shadow", f"{user}:!:{epoch // 86400}:0:99999:7:::\n", 0o640, owner=(0, shadow_gid),
                mtime=epoch)
    if tree.is_file("etc/gshadow"):
        tree.append("etc/gshadow", f"{user}:!::\n", 0o640, owner=(0, shadow_gid), mtime=epoch)
    tree.write(f"etc/sudoers.d/90-{user}", f"{user} ALL=(ALL) NOPASSWD:ALL\n", 0o440, mtime=epoch)
    tree.mkdir(f"home/{user}", 0o750, owner=(uid, uid), mtime=epoch)
    if key:
        _authorized_key(tree, f"home/{user}", uid, uid, key, epoch)
    return {"user": user, "uid": uid}


def group_id(tree: ImageTree, name: str) -> int | None:
    for line in tree.read_text("etc/group").splitlines():
        parts = line.split(":")
        if parts[0] == name and len(parts) > 2 and parts[2].isdigit():
            return int(parts[2])
    return None


def _authorized_key(tree: ImageTree, home: str, uid: int, gid: int, key: str | None, epoch: int) -> None:
    if key is None:
        return
    tree.mkdir(f"{home}/.ssh", 0o700, owner=(uid, gid), mtime=epoch)
    tree.write(f"{home}/.ssh/authorized_keys", key, 0o600, owner=(uid, gid), mtime=epoch)



def add_users(tree: ImageTree, options: Any, epoch: int) -> dict[str, Any]:
    specs = users_from(options)
    password = hash_password(Path(options.password_file)) if options.password_file else None
    if not specs:
        details = add_user(tree, None, options.ssh_key[0] if options.ssh_key else None, epoch)
        if password:
            set_password(tree, "root", password, epoch)
            details["password_for"] = ["root"]
        return details
    for spec in specs:
        missing = [g for g in spec.groups if group_id(tree, g) is None]
        if missing:
            raise UserError(f"--user {spec.name}: the image has no group {', '.join(missing)}",
                            hint="name groups that /etc/group of the image lists (e.g. sudo, adm, users), or "
                                 "create them in the layer")
    users = []
    for spec in specs:
        created = add_user(tree, spec.name, spec.ssh_key, epoch)
        for group in spec.groups:
            add_to_group(tree, spec.name, group, epoch)
        if password:
            set_password(tree, spec.name, password, epoch)
        users.append({**created, "groups": list(spec.groups), "ssh_key": spec.ssh_key is not None})
    details: dict[str, Any] = {"user": users[0]["user"], "uid": users[0]["uid"], "users": users}
    if password:
        details["password_for"] = [spec.name for spec in specs]
    return details


def hash_password(path: Path) -> str:
    """The file's first line, hashed on the host (SHA-512 crypt, random salt): the clear text never
    reaches the image, the manifest or a cache key."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--password-file {path}: cannot be read as text ({exc})",
                        hint="give a UTF-8 text file whose first line is the password") from exc
    if not lines or not lines[0]:
        raise UserError(f"--password-file {path}: the first line is empty", hint="put the password on the first line")
    if stat.S_IMODE(path.stat().st_mode) & 0o044:
        log.warn(f"--password-file {path}: others may read it (chmod 600 it)")
    hashed = output(["openssl", "passwd", "-6", "-stdin"], input_text=lines[0] + "\n",
                    step="hashing the --password-file password").strip()
    if not hashed.startswith("$6$"):
        raise UserError("openssl passwd -6 did not give a SHA-512 crypt hash", hint="install a current openssl")
    return hashed


def set_password(tree: ImageTree, user: str, hashed: str, epoch: int) -> None:
    lines = tree.read_text("etc/shadow").splitlines()
    for number, line in enumerate(lines):
        fields = line.split(":")
        if fields[0] == user and len(fields) >= 3:
            fields[1], fields[2] = hashed, str(epoch // 86400)
            lines[number] = ":".join(fields)
            break
    else:
        raise UserError(f"--password-file: the image's /etc/shadow has no entry for {user}",
                        hint="the image's shadow file is incomplete; fix the image")
    shadow = tree.lstat("etc/shadow")
    owner = (shadow.st_uid, shadow.st_gid) if shadow else (0, 0)
    tree.write("etc/shadow", "\n".join(lines) + "\n", 0o640, owner=owner, mtime=epoch)


def add_to_group(tree: ImageTree, user: str, group: str, epoch: int) -> None:
    for rel, member_field in (("etc/group", 3), ("etc/gshadow", 3)):
        if not tree.is_file(rel):
            continue
        lines = tree.read_text(rel).splitlines()
        for number, line in enumerate(lines):
            fields = line.split(":")
            if fields[0] == group and len(fields) > member_field:
                members = [m for m in fields[member_field].split(",") if m]
                fields[member_field] = ",".join([*members, user] if user not in members else members)
                lines[number] = ":".join(fields)
        entry = tree.lstat(rel)
        tree.write(rel, "\n".join(lines) + "\n", stat.S_IMODE(entry.st_mode) if entry else 0o644,
                   owner=(entry.st_uid, entry.st_gid) if entry else (0, 0), mtime=epoch)


# --- time zone, locale, keymap ---------------------------------------------------------------------------

def set_timezone(tree: ImageTree, zone: str, epoch: int) -> str:
    if not tree.is_file(f"usr/share/zoneinfo/{zone}"):
        hint = ("install tzdata in the layer" if not tree.is_dir("usr/share/zoneinfo")
                else "use a name from the image's /usr/share/zoneinfo, e.g. Europe/Berlin or America/New_York")
        raise UserError(f"--timezone {zone}: the image has no /usr/share/zoneinfo/{zone}", hint=hint)
    tree.symlink("etc/localtime", f"../usr/share/zoneinfo/{zone}")
    tree.write("etc/timezone", f"{zone}\n", mtime=epoch)
    return zone


def locale_available(tree: ImageTree, name: str) -> bool:
    """C/POSIX/C.UTF-8 (glibc's own), a compiled locale directory, or one locale-gen put in the archive."""
    if name in _BUILTIN_LOCALES:
        return True
    language, _, codeset = name.partition(".")
    normalized = f"{language}.{codeset.lower().replace('-', '')}" if codeset else language
    if tree.is_dir(f"usr/lib/locale/{name}") or tree.is_dir(f"usr/lib/locale/{normalized}"):
        return True
    if not tree.is_file("usr/lib/locale/locale-archive"):
        return False
    generated = [line.split()[0] for line in tree.read_text("etc/locale.gen").splitlines()
                 if line.strip() and not line.lstrip().startswith("#")]
    return name in generated


def set_locale(tree: ImageTree, name: str, epoch: int) -> str:
    if not locale_available(tree, name):
        raise UserError(f"--locale {name}: the image has not generated this locale",
                        hint="generate it in the layer (Debian: RUN apt-get install -y locales && echo "
                             f"'{name} {name.partition('.')[2] or 'UTF-8'}' >> /etc/locale.gen && locale-gen), "
                             "or use C.UTF-8")
    content = f"LANG={name}\n"
    tree.write("etc/default/locale", content, mtime=epoch)   # Debian: pam_env and systemd read it
    tree.write("etc/locale.conf", content, mtime=epoch)      # systemd elsewhere
    return name


def set_keymap(tree: ImageTree, keymap: str, epoch: int) -> str:
    """The console keymap (vconsole.conf, used where the image has kbd) and, when the image has
    /etc/default/keyboard (keyboard-configuration), X's layout: 'de-nodeadkeys' -> layout de, variant
    nodeadkeys. Debian 13 makes vconsole.conf a link to default/keyboard and its tmpfiles.d puts the link back
    at every boot, so the keymap goes into the file a link names (inside the image tree), never over the link."""
    with tree.at("etc/vconsole.conf", follow=True, create=True) as (_fd, _name, vconsole_path):
        pass
    vconsole = [line for line in tree.read_text(vconsole_path).splitlines() if not line.startswith("KEYMAP=")]
    tree.write(vconsole_path, "\n".join([*vconsole, f"KEYMAP={keymap}"]) + "\n", mtime=epoch)
    if tree.is_file("etc/default/keyboard"):
        layout, _, variant = keymap.partition("-")
        values = {"XKBLAYOUT": layout, "XKBVARIANT": variant}
        lines = [line for line in tree.read_text("etc/default/keyboard").splitlines()
                 if line.split("=", 1)[0] not in values]
        tree.write("etc/default/keyboard", "\n".join([*lines, *(f'{k}="{v}"' for k, v in values.items())]) + "\n",
                   mtime=epoch)
    return keymap


# --- extra files -------------------------------------------------------------------------------------------

def copy_into(tree: ImageTree, source: Path, dest: str, epoch: int) -> str:
    """A host file or directory tree copied to dest in the image: root-owned, permission bits kept, mtimes
    the export's epoch. A file onto a DEST ending in '/' keeps its name. Symlinks are copied as symlinks;
    devices, sockets and FIFOs are refused."""
    rel = dest.strip("/")
    if source.is_dir():
        _copy_dir(tree, source, rel, epoch)
    else:
        if dest.endswith("/"):
            rel = f"{rel}/{source.name}"
        _copy_entry(tree, source, rel, epoch)
    return f"/{rel}"


def _copy_dir(tree: ImageTree, source: Path, rel: str, epoch: int) -> None:
    tree.mkdir(rel, stat.S_IMODE(source.stat().st_mode), owner=(0, 0), mtime=epoch)
    for entry in sorted(os.scandir(source), key=lambda e: e.name):
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            _copy_dir(tree, path, f"{rel}/{entry.name}", epoch)
        else:
            _copy_entry(tree, path, f"{rel}/{entry.name}", epoch)


def _copy_entry(tree: ImageTree, source: Path, rel: str, epoch: int) -> None:
    info = source.lstat()
    if stat.S_ISLNK(info.st_mode):
        tree.symlink(rel, os.readlink(source))
    elif stat.S_ISREG(info.st_mode):
        tree.write(rel, source.read_bytes(), stat.S_IMODE(info.st_mode), mtime=epoch)
    else:
        raise UserError(f"--copy {source}: not a regular file, directory or symlink",
                        hint="copy only files, directories and symlinks (devices, sockets and FIFOs are refused)")
