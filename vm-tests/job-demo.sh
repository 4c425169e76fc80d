# Guest job for the demo (the README's first command): the seed walk-through,
# printing every step it takes and what the kernel answered.
for bin in $(cat /tests.list); do
    case "${bin##*/}" in
        dm_seed_walkthrough-*)
            "$bin" --exact seed_walkthrough_three_level_chain --nocapture --test-threads=1
            exit $?
            ;;
    esac
done
echo "demo: walk-through binary not found" >&2
exit 1
