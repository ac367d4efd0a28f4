#!/bin/sh
# First start of this WSL distribution: create the default user (uid @UID@) with sudo rights.
# WSL runs this once, as root, with a terminal; it then logs in as uid @UID@. Written by openos365.
set -u
uid='@UID@'
preset='@USER@'

if getent passwd "$uid" >/dev/null; then
    echo "The default user ($(getent passwd "$uid" | cut -d: -f1)) already exists."
    exit 0
fi

echo 'Create the default UNIX user account of this distribution.'
echo 'The name does not need to match your Windows user name (see https://aka.ms/wslusers).'
groups=''
for group in sudo adm users; do
    getent group "$group" >/dev/null && groups="${groups:+$groups,}$group"
done

while :; do
    username="$preset"
    if [ -z "$username" ]; then
        printf 'New UNIX user name: '
        read -r username || exit 1
    fi
    if ! printf '%s' "$username" | grep -Eq '^[a-z_][a-z0-9_-]{0,31}$'; then
        echo 'Use lower-case letters, digits, "_" and "-", starting with a letter.'
        preset=''
        continue
    fi
    if /usr/sbin/useradd --create-home --uid "$uid" --user-group --shell /bin/bash \
            ${groups:+--groups "$groups"} "$username"; then
        until passwd "$username"; do
            echo 'Try again.'
        done
        break
    fi
    preset=''
done
echo "Created $username (uid $uid)${groups:+, member of $groups}."
