# Sourced by loadtest/setup_*_env.sh: build (or find ready) a benchmark-only peer venv.
#
#   peer_venv LABEL VENV MIN_MINOR CHECK LIST_REGEX PACKAGE...
#
# LABEL names the peer in messages; VENV is the venv's directory; MIN_MINOR the lowest Python 3.x
# it needs; CHECK a shell command run with $VENV exported, true once the peer works (e.g.
# '"$VENV/bin/python" -c "import feast"'); LIST_REGEX the packages whose versions the last line
# reports. Idempotent: a stamp in VENV (.LABEL-stamp) records the package list, and when it matches and CHECK
# passes nothing is installed. PYTHON (default python3) is the interpreter the venv is made from.
peer_venv() {
    local label="$1" venv="$2" min_minor="$3" check="$4" list="$5"
    shift 5
    local packages=("$@") python="${PYTHON:-python3}" stamp="$venv/.$label-stamp"
    local want="${packages[*]}"
    export VENV="$venv"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && bash -c "$check" >/dev/null 2>&1; then
        echo "$label env ready: $venv ($want)"
        return 0
    fi
    "$python" -c "import sys; assert sys.version_info[:2] >= (3, $min_minor), 'the $label peer needs Python >= 3.$min_minor, found ' + sys.version.split()[0]"
    test -x "$venv/bin/python" || "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "${packages[@]}"
    bash -c "$check" >/dev/null
    echo "$want" > "$stamp"
    echo "$label env ready: $venv ($("$venv/bin/python" -m pip list 2>/dev/null | grep -iE "^($list) " | tr -s ' ' | tr '\n' ';'))"
}
