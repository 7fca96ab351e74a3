// Entry point of the lnassist plugin's bundle (girder build: plugins/lnassist/plugin.min.js), loaded
// on every Girder and HistomicsUI page: the LN panel in HistomicsUI's image view and the study table
// on folder pages.
import './views/imageView';
import './views/studyTable';
