"""Disk building blocks: partition layout, filesystems built from directories, GRUB written into place."""
