# Bash functions, sourced by scripts/fuzz and scripts/leak-check, that compile
# the package's targets with swiftc and clang directly instead of through
# SwiftPM. SwiftPM builds only the targets that Package.swift declares, and
# its -sanitize=fuzzer would also link libFuzzer's main() into the tokentls
# executable. The separate build leaves .build/debug untouched.
#
# The caller sets, before calling any function:
#   root            the package root
#   build_dir       an existing folder for modules and objects
#   swift_flags     array: optimisation and -sanitize= flags for swiftc
#   c_flags         array: optimisation and -fsanitize= flags for clang
#
# Each Swift target becomes one object file (whole-module compilation) and one
# .swiftmodule in build_dir. The C targets of the package (CShims,
# CTokenProvider) get a module map in build_dir, like the one SwiftPM
# generates for a folder with an include/ subfolder.
# shellcheck shell=bash disable=SC2154 # root, build_dir and the flag arrays come from the caller.

swift_bin=/opt/swift/usr/bin

# Print the flags that let swiftc find the system-library module maps of
# Sources/, the C module maps written by compile_c_target and the modules
# already compiled.
module_search_flags() {
    local flag
    for flag in $(pkg-config --cflags-only-I p11-kit-1 openssl libcurl); do
        printf '%s\n' -Xcc "$flag"
    done
    printf '%s\n' \
        -I "$build_dir" \
        -I "$root/Sources/COpenSSL" \
        -I "$root/Sources/CP11Kit" \
        -I "$root/Sources/CCurl"
    local map
    for map in "$build_dir"/*.modulemap; do
        if [[ -f $map ]]; then
            printf '%s\n' -Xcc "-fmodule-map-file=$map"
        fi
    done
}

# Write the module map of a C target and compile its .c files into the
# archive build_dir/libNAME.a. $1 is the target name, $2 its header under
# include/.
compile_c_target() {
    local name=$1 header=$2
    local folder=$root/Sources/$name
    cat >"$build_dir/$name.modulemap" <<EOF
module $name {
    header "$folder/include/$header"
    export *
}
EOF
    local include_flags source objects=()
    read -r -a include_flags <<<"$(pkg-config --cflags-only-I p11-kit-1 openssl libcurl)"
    mkdir -p "$build_dir/$name-objects"
    for source in "$folder"/*.c; do
        objects+=("$build_dir/$name-objects/$(basename "$source" .c).o")
        "$swift_bin/clang" "${c_flags[@]}" -g -std=gnu11 -I "$folder/include" "${include_flags[@]}" \
            -c "$source" -o "${objects[-1]}"
    done
    rm -f "$build_dir/lib$name.a"
    "$swift_bin/llvm-ar" rcs "$build_dir/lib$name.a" "${objects[@]}"
}

# Compile Sources/NAME/*.swift into build_dir/NAME.o and NAME.swiftmodule.
# Warnings are left to the package's own build, which shows them anyway.
# Line tables are enough for sanitizer stacks. Full -g with -Onone makes
# the driver add a job that wraps the .swiftmodule into an object of the
# same name as -o, and the driver then stops with "multiple producers".
compile_swift_module() {
    local name=$1
    local search_flags
    mapfile -t search_flags < <(module_search_flags)
    "$swift_bin/swiftc" "${swift_flags[@]}" -gline-tables-only -swift-version 6 -parse-as-library -wmo -suppress-warnings \
        "${search_flags[@]}" -module-name "$name" \
        -emit-module -emit-module-path "$build_dir/$name.swiftmodule" \
        -c -o "$build_dir/$name.o" "$root/Sources/$name"/*.swift
}

# Link an executable from Swift sources and compiled targets. $1 is the
# output path, then the Swift sources, then "--", then the target names: a
# Swift target links as build_dir/NAME.o, a C target as build_dir/libNAME.a.
link_swift_program() {
    local output=$1
    shift
    local sources=() objects=()
    while (($# > 0)) && [[ $1 != -- ]]; do
        sources+=("$1")
        shift
    done
    shift
    while (($# > 0)); do
        if [[ -f $build_dir/$1.o ]]; then
            objects+=("$build_dir/$1.o")
        else
            objects+=("$build_dir/lib$1.a")
        fi
        shift
    done
    local search_flags
    mapfile -t search_flags < <(module_search_flags)
    "$swift_bin/swiftc" "${swift_flags[@]}" -gline-tables-only -swift-version 6 -parse-as-library -use-ld=lld \
        "${search_flags[@]}" -o "$output" "${sources[@]}" "${objects[@]}" \
        -lssl -lcrypto -lp11-kit -lcurl
}
