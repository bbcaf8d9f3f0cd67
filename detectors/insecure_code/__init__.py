"""Building blocks of the insecure-code detector (``detectors.insecure_code.detector``).

* :mod:`detectors.insecure_code.extract` finds code in a markdown answer (fenced, indented,
  inline, or a whole answer that is bare code) and computes how much of a stream
  may be released;
* :mod:`detectors.insecure_code.langid` names the language of a block from its tag or content;
* :mod:`detectors.insecure_code.rules` loads and validates the YAML rule packs;
* :mod:`detectors.insecure_code.lines` groups physical lines into logical lines and blanks comments;
* :mod:`detectors.insecure_code.anchors` extracts the literals a rule's matches must contain;
* :mod:`detectors.insecure_code.syntax` holds the per-language tree-sitter tables and parsers;
* :mod:`detectors.insecure_code.scope` collects what a snippet defines (functions, variables, calls);
* :mod:`detectors.insecure_code.flow` decides how a value was built (constant, dynamic, tainted);
* :mod:`detectors.insecure_code.sinks` matches the syntax-tier rules, wrappers included;
* :mod:`detectors.insecure_code.engine` runs both tiers on one block.

Nothing here imports the firewall: the engine is a pure function of the code text,
which is what makes its results cacheable per block during a stream.
"""
