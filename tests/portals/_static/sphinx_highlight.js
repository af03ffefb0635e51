window.SphinxHighlight = {};
