"""Volatility hot spots that grow with the guest, made fast without changing a result.

Measured on the 2 GiB Debian server guest (~100 processes, ~3,300 VMAs, 58
modules), py-spy over linux-triage: ``proc.Maps``, ``malfind``, the YARA
readers (``tasks.process_regions``) and ``snapscope.executables`` each spend
half their time resolving VMA file names, the same names each time, and
``hidden_modules`` reads its candidates 8 bytes at a time through the page
tables (~700,000 translations). Every object attribute access also paid for
a list of dataclass fields.

1. ``ObjectInformation.__contains__`` built ``[f.name for f in fields(self)]``
   on every call (every ``obj.vol.offset``); the names are the class's
   fields, fixed: a frozenset answers the same. ``ReadOnlyMapping``'s
   attribute access asked its mapping twice (``in``, then ``[]``); once,
   with the same KeyError -> AttributeError, suffices.
2. ``vm_area_struct.get_name(context, task)`` is memoised per context on
   (VMA, task): the kernel structures of a dump never change, and Maps,
   malfind, the YARA readers and the executables collector ask for the same
   names.
3. ``Modules.get_hidden_modules`` (the hidden_modules plugin): the module area
   is read in bulk over its mapped pages, and only candidates whose
   self-pointer matches become module objects, checked by Volatility's own
   ``is_valid`` in the same order. A page that maps but cannot be read falls
   back to Volatility's own per-candidate read.
4. Every object's ``vol`` is a ``ChainMap`` over ({}, type and offset, its
   ObjectInformation, its template's arguments); a member lookup tried each map
   in turn and an ObjectInformation without the key raised a formatted
   KeyError that ChainMap caught: a third of ``proc.Maps``' time. The same
   maps are asked ``in`` first (a dict lookup, or the fields' frozenset of 1.),
   the first map holding the key answers, as before. ``ObjectTemplate.__call__``
   copies its arguments from its own ChainMap directly instead of through a
   new read-only view per argument.
5. ``LinearlyMappedLayer.read`` (every page-table layer: the kernel's, each
   process's, the ELF's segments) keeps its last 512 answers in an LRU cache
   whatever their size. Small reads repeat (a task's fields, page tables) and
   stay cached; but YARA reads a process 16 MiB at a time, and 512 such
   answers, plus the chunks below them, held 4.7 GB of an 8 GiB guest's
   memory. Reads above ``CACHED_READ_MAX`` bypass the cache (the same bytes,
   read again if asked again): memory no longer grows with the guest.

6. ``LinuxUtilities.do_get_path(root dentry, root mount, dentry, mount)``
   walks a file's dentries and mounts up to the task's root, reading each
   name: 10 s of an 8 GiB guest's triage (Maps, lsof, the YARA readers), for
   the same few hundred files (every process maps libc, with the same root).
   Its answer is a function of those four kernel objects in one dump: it is
   memoised per context on their layer and addresses.

Each is checked against Volatility's own answer in
tests/unit/engines/memory/test_speedups_objects.py and on the server lab.

Example (once, after Volatility is imported)::

    install_all()
"""

from __future__ import annotations

import collections
import dataclasses
import types
import weakref

_NAMES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # context -> {(vma, task): name}
_PATHS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # context -> {(root, mount, dentry, mount): path}


def install_object_speedups(objects_interface, linux_extensions) -> None:
    """1. and 2. above; idempotent."""
    info = objects_interface.ObjectInformation
    if not getattr(info, "_snapscope_fast", False):
        names = frozenset(f.name for f in dataclasses.fields(info))
        info.__contains__ = lambda self, key: key in names
        info._snapscope_fast = True

    mapping = objects_interface.ReadOnlyMapping
    if not getattr(mapping, "_snapscope_fast", False):

        def __getattr__(self, attr):
            if attr == "_dict":
                return object.__getattribute__(self, attr)
            try:
                return self._dict[attr]
            except KeyError:
                raise AttributeError(f"Object has no attribute: {self.__class__.__name__}.{attr}") from None

        mapping.__getattr__ = __getattr__
        mapping._snapscope_fast = True

    vma = linux_extensions.vm_area_struct
    if not getattr(vma, "_snapscope_memo", False):
        get_name = vma.get_name

        def memo_get_name(self, context, task):
            try:
                memo = _NAMES.setdefault(context, {})
            except TypeError:  # a context that cannot be weakly referenced: no memo
                return get_name(self, context, task)
            key = (self.vol.layer_name, self.vol.offset, task.vol.layer_name, task.vol.offset)
            if key not in memo:
                memo[key] = get_name(self, context, task)
            return memo[key]

        vma.get_name = memo_get_name
        vma._snapscope_memo = True


class FastChainMap(collections.ChainMap):
    """A ChainMap whose lookup asks each map ``in`` before ``[]``: no exception per map that lacks
    the key (Volatility's ObjectInformation raises a formatted KeyError for every miss)."""

    def __getitem__(self, key):
        for mapping in self.maps:
            if key in mapping:
                return mapping[key]
        return self.__missing__(key)

    def get(self, key, default=None):
        for mapping in self.maps:
            if key in mapping:
                return mapping[key]
        return default


def install_chainmap_lookups(objects_interface, templates_module) -> None:
    """4. above; idempotent. Needs 1. (ObjectInformation's ``in`` must be its fields)."""
    if getattr(objects_interface, "_snapscope_fast_chainmap", False):
        return
    # The module names ``collections`` only to build these ChainMaps once imported (its
    # ``collections.abc`` base classes are already bound).
    objects_interface.collections = types.SimpleNamespace(ChainMap=FastChainMap, abc=collections.abc)
    template = templates_module.ObjectTemplate

    def __call__(self, context, object_info):
        vol = self._vol
        arguments = {arg: vol[arg] for arg in vol if arg != "object_class"}
        return vol["object_class"](context=context, object_info=object_info, **arguments)

    template.__call__ = __call__
    objects_interface._snapscope_fast_chainmap = True


CACHED_READ_MAX = 64 << 10  # bytes; a larger read is not kept (512 of them were gigabytes)


def install_bounded_read_cache(linear_module) -> None:
    """5. above; idempotent."""
    layer = linear_module.LinearlyMappedLayer
    if getattr(layer, "_snapscope_bounded", False):
        return
    cached = layer.read
    uncached = cached.__wrapped__

    def read(self, offset, length, pad=False):
        if length > CACHED_READ_MAX:
            return uncached(self, offset, length, pad)
        return cached(self, offset, length, pad)

    layer.read = read
    layer._snapscope_bounded = True


def _identity(obj):
    return (obj.vol.layer_name, obj.vol.offset, obj.vol.type_name)


def install_path_memo(linux_symbols) -> None:
    """6. above; idempotent."""
    utilities = linux_symbols.LinuxUtilities
    if getattr(utilities, "_snapscope_path_memo", False):
        return
    do_get_path = utilities.do_get_path.__func__

    def memo_do_get_path(cls, rdentry, rmnt, dentry, vfsmnt):
        try:
            memo = _PATHS.setdefault(dentry._context, {})
            key = tuple(map(_identity, (rdentry, rmnt, dentry, vfsmnt)))
        except (AttributeError, TypeError):  # not four objects of one weakly referable context: no memo
            return do_get_path(cls, rdentry, rmnt, dentry, vfsmnt)
        if key not in memo:
            memo[key] = do_get_path(cls, rdentry, rmnt, dentry, vfsmnt)
        return memo[key]

    utilities.do_get_path = classmethod(memo_do_get_path)
    utilities._snapscope_path_memo = True


def install_all() -> None:
    """1. to 6. above on the imported Volatility; idempotent."""
    from volatility3.framework import exceptions
    from volatility3.framework.interfaces import objects as objects_interface
    from volatility3.framework.layers import linear
    from volatility3.framework.objects import templates
    from volatility3.framework.symbols import linux as linux_symbols
    from volatility3.framework.symbols.linux import extensions as linux_extensions
    from volatility3.framework.symbols.linux.utilities import modules as linux_modules

    install_object_speedups(objects_interface, linux_extensions)
    install_chainmap_lookups(objects_interface, templates)
    install_hidden_modules_scan(linux_modules, exceptions)
    install_bounded_read_cache(linear)
    install_path_memo(linux_symbols)


def _readable_spans(layer, start: int, end: int):
    """Merged (start, end) virtual ranges of [start, end) that map, in order."""
    spans: list[list[int]] = []
    for offset, length, *_rest in layer.mapping(start, end - start, ignore_errors=True):
        if spans and spans[-1][1] == offset:
            spans[-1][1] = offset + length
        else:
            spans.append([offset, offset + length])
    return spans


READ_AT_ONCE = 4 << 20  # bytes of the module area read per call (the area is tens of MB)


def hidden_module_candidates(layer, first: int, stop: int, step: int, skip, member, invalid):
    """Addresses of ``range(first, stop, step)`` not in ``skip`` whose pointer at ``address + offset``
    reads back as the address itself, in order: what Volatility's loop, reading one pointer per
    address, lets through. ``member`` is (offset, size, byteorder, signed) of that pointer.

    Only mapped spans are read, in bulk; a span that maps but fails to read (``invalid``) is read
    one pointer at a time, like Volatility does.
    """
    offset, size, byteorder, signed = member
    if stop <= first:
        return
    for span_start, span_end in _readable_spans(layer, first + offset, stop - 1 + offset + size):
        # the first candidate whose pointer starts in the span, on the range's grid
        address = max(first, span_start - offset)
        address += -(address - first) % step
        while address < stop and address + offset + size <= span_end:
            chunk_start = address + offset
            chunk_end = min(span_end, chunk_start + READ_AT_ONCE + size)
            try:
                data = layer.read(chunk_start, chunk_end - chunk_start)
            except invalid:
                data = None
            while address < stop and address + offset + size <= chunk_end:
                at = address + offset
                if address not in skip:
                    if data is not None:
                        value = int.from_bytes(
                            data[at - chunk_start : at - chunk_start + size], byteorder, signed=signed
                        )
                    else:
                        try:
                            value = int.from_bytes(layer.read(at, size), byteorder, signed=signed)
                        except invalid:
                            value = None
                    if value == address:
                        yield address
                address += step


def install_hidden_modules_scan(modules_module, exceptions_module) -> None:
    """3. above: ``Modules.get_hidden_modules`` reads the module area in bulk; idempotent."""
    cls = modules_module.Modules
    if getattr(cls, "_snapscope_fast", False):
        return
    vollog = modules_module.vollog
    invalid = (exceptions_module.PagedInvalidAddressException, exceptions_module.InvalidAddressException)

    def get_hidden_modules(cls, context, vmlinux_module_name, known_module_addresses, modules_memory_boundaries):
        vmlinux = context.modules[vmlinux_module_name]
        vmlinux_layer = context.layers[vmlinux.layer_name]
        module_addr_min, module_addr_max = modules_memory_boundaries
        alignment = cls.get_module_address_alignment(context, vmlinux_module_name)
        if not cls.validate_alignment_patterns(known_module_addresses, alignment):
            vollog.warning(
                f"Module addresses aren't aligned to {alignment} bytes. Switching to 1 byte alignment scan method."
            )
            alignment = 1
        mkobj_offset = vmlinux.get_type("module").relative_child_offset("mkobj")
        mod_offset = vmlinux.get_type("module_kobject").relative_child_offset("mod")
        template = vmlinux.get_type("module_kobject").child_template("mod")
        data_format = template.data_format
        member = (mkobj_offset + mod_offset, template.size, data_format.byteorder, data_format.signed)
        for module_addr in hidden_module_candidates(
            vmlinux_layer, module_addr_min, module_addr_max, alignment, known_module_addresses, member, invalid
        ):
            module = vmlinux.object("module", offset=module_addr, absolute=True)
            if module and module.is_valid():
                yield module

    cls.get_hidden_modules = classmethod(get_hidden_modules)
    cls._snapscope_fast = True
