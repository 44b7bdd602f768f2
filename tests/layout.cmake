# The tree's shape, checked on every CI run: folders include each other without cycles
# (scripts/folder_include_graph.py), comments cite only what a reader of the repository can open
# (scripts/comment_references.py), and the router decides nothing by a backend's name (it reads the
# properties allocators/backend_stack.h gives it).
find_package(Python3 COMPONENTS Interpreter QUIET)
if(Python3_Interpreter_FOUND)
  add_test(NAME layout_folder_include_graph_acyclic
           COMMAND ${Python3_EXECUTABLE} ${PROJECT_SOURCE_DIR}/scripts/folder_include_graph.py ${PROJECT_SOURCE_DIR})
  add_test(NAME layout_comment_references_resolve
           COMMAND ${Python3_EXECUTABLE} ${PROJECT_SOURCE_DIR}/scripts/comment_references.py ${PROJECT_SOURCE_DIR})
endif()
# grep's status 1 is "no line matched"; 0 (a name found) and 2 (no router/ to read) fail.
add_test(NAME layout_router_holds_no_backend_name
         COMMAND sh -c "grep -rnE '\"(tiered|vmm|buddy|slab|mempool|passthrough)\"' \"$0\"; test $? -eq 1"
                 ${PROJECT_SOURCE_DIR}/router)
