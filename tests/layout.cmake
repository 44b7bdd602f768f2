# The tree's shape: folders include each other without cycles (scripts/folder_include_graph.py).
find_package(Python3 COMPONENTS Interpreter QUIET)
if(Python3_Interpreter_FOUND)
  add_test(NAME layout_folder_include_graph_acyclic
           COMMAND ${Python3_EXECUTABLE} ${PROJECT_SOURCE_DIR}/scripts/folder_include_graph.py ${PROJECT_SOURCE_DIR})
endif()
