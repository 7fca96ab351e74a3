// Entry point of the lnassist plugin's bundle (girder build: plugins/lnassist/plugin.min.js), loaded
// on every HistomicsUI page after HistomicsUI's own. The LN panel in the image view (counts, review
// state, "Run LN analysis" with fixed parameters) and the folder batch buttons land here.
